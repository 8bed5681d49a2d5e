"""Transport overhead: the runtime's round trip for a 1 MiB cut against a plain gRPC echo of the same bytes.

A two-node model ``x -> Relu -> cut -> Relu -> y`` (float32 [1, 262144]: 1 MiB each)
is split at ``cut`` with the raw codec, so the edge sends 1 MiB and the worker
answers 1 MiB, and both segments are a single cheap Relu (an identity on the
non-negative inputs used). The worker is `splitpoint serve` (its own process);
the echo is a bare grpcio server in another process whose one unary method
returns the request's bytes (no protobuf message, no codec, no model), with the
same message-size limits. Both are on the same loopback, called from this
process one after the other, alternating call by call for ``--rounds`` rounds of
``--calls`` calls. A third call goes to the same echo server's ``Copy`` method,
which answers through the copies no runtime can skip (an answer array of its own,
joined into the message; the client joins its request from an array and reads the
answer into an array it owns): how much of the gap is those copies.

Figures: median latency of ``EdgeRuntime.infer`` (everything: input checks, the
prefix, building the OIP request, the call, the worker's decoding and suffix,
reading the answer) and of the echo call; and the runtime's transport alone:
``infer`` less the two segments' compute (the edge's prefix as its trace times
it, the worker's suffix as the worker reports it), which is the round trip the
echo stands for. Ratios against the echo (target: at most 1.25), and the
median ratio per round, to show the spread.

    .venv/bin/python benchmarks/transport_bench.py [--rounds 5] [--calls 40]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper
from report import machine, print_table

from edge import EdgeRuntime
from partitioner import split
from testbed.demo import free_port, start_worker, stop_worker

ELEMENTS = 1 << 18  # float32: 1 MiB
LIMIT = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
ECHO = "/echo.Echo/Echo"
COPY = "/echo.Echo/Copy"


def relu_pair() -> onnx.ModelProto:
    shape = [1, ELEMENTS]
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["cut"], name="edge_relu"), helper.make_node("Relu", ["cut"], ["y"], name="cloud_relu")],
        "relu_pair",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _fresh_copy(request: bytes, context: object) -> bytes:
    """The bytes back in a new buffer made from a new array, as any server computing an answer must."""
    answer = np.frombuffer(request, np.uint8).copy()
    return b"".join([memoryview(answer)])


def serve_echo(port: int) -> None:
    """Child process: a grpcio server echoing raw bytes, as fast as gRPC in Python gets.

    ``Echo`` returns the request's own buffer; ``Copy`` returns it through the copies a
    model server cannot avoid (an output array of its own, joined into a message).
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=LIMIT)
    handlers = {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
                "Copy": grpc.unary_unary_rpc_method_handler(_fresh_copy)}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("echo.Echo", handlers)])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=40, help="calls of each kind per round (default: 40)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="splitpoint-transport-") as tmp:
        root = Path(tmp)
        onnx.save(relu_pair(), root / "relu_pair.onnx")
        bundle = split(root / "relu_pair.onnx", root / "bundle", at=[["cut"]], codec="raw")
        split_id = bundle.manifest.default_split
        worker_port, echo_port = free_port(), free_port()
        worker = start_worker(root / "bundle", worker_port, root / "worker.log")
        echo = multiprocessing.get_context("spawn").Process(target=serve_echo, args=(echo_port,), daemon=True)
        echo.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{echo_port}", options=LIMIT)
        try:
            grpc.channel_ready_future(channel).result(timeout=30)
            call = channel.unary_unary(ECHO)
            copy_call = channel.unary_unary(COPY)

            def copies() -> int:
                """The echo with the copies a runtime cannot avoid: the request joined from an array, the answer read into one."""
                back = copy_call(b"".join([memoryview(x["x"]).cast("B")]), timeout=10)
                return np.frombuffer(back, np.float32).copy().nbytes

            x = {"x": np.abs(np.random.default_rng(0).standard_normal((1, ELEMENTS))).astype(np.float32)}
            payload = x["x"].tobytes()
            runtime_ms: list[float] = []
            transport_ms: list[float] = []
            echo_ms: list[float] = []
            copies_ms: list[float] = []
            per_round: list[float] = []
            with EdgeRuntime(root / "bundle", cloud=f"127.0.0.1:{worker_port}", split=split_id, codec="raw",
                             share_weights=False) as rt:
                for _ in range(5):  # connections up, sessions warm
                    rt.infer(x)
                    call(payload, timeout=10)
                    copies()
                for _ in range(args.rounds):
                    rt_round, echo_round = [], []
                    for _ in range(args.calls):
                        t = time.perf_counter()
                        y = rt.infer(x)
                        rt_round.append((time.perf_counter() - t) * 1e3)
                        trace = rt.last_trace
                        assert trace.path == "cloud" and trace.bytes_encoded >= 1 << 20
                        transport_ms.append(rt_round[-1] - trace.edge_ms - trace.cloud_ms)
                        t = time.perf_counter()
                        back = call(payload, timeout=10)
                        echo_round.append((time.perf_counter() - t) * 1e3)
                        assert len(back) == len(payload) and y["y"].nbytes == len(payload)
                        t = time.perf_counter()
                        assert copies() == len(payload)
                        copies_ms.append((time.perf_counter() - t) * 1e3)
                    runtime_ms += rt_round
                    echo_ms += echo_round
                    per_round.append(statistics.median(rt_round) / statistics.median(echo_round))
                counters = rt.counters
        finally:
            channel.close()
            echo.kill()
            stop_worker(worker)

    rt_p50, echo_p50, tr_p50 = statistics.median(runtime_ms), statistics.median(echo_ms), statistics.median(transport_ms)
    print(f"Machine: {machine()}, onnxruntime {onnxruntime.__version__}, grpcio {grpc.__version__}. "
          f"{args.rounds} rounds x {args.calls} calls of each, alternating; "
          f"{counters.cloud} runtime calls answered by the worker.\n")
    print_table(["round trip of 1 MiB each way", "median ms", "p95 ms"], [
        ["EdgeRuntime.infer, split at the 1 MiB cut, raw codec", f"{rt_p50:.2f}", f"{np.percentile(runtime_ms, 95):.2f}"],
        ["  its transport: infer less the prefix and the suffix compute", f"{tr_p50:.2f}",
         f"{np.percentile(transport_ms, 95):.2f}"],
        ["plain gRPC echo of the same bytes", f"{echo_p50:.2f}", f"{np.percentile(echo_ms, 95):.2f}"],
        ["  the echo with the copies any runtime makes (request joined from an array, answer from a new array, "
         "read into an owned one)", f"{statistics.median(copies_ms):.2f}", f"{np.percentile(copies_ms, 95):.2f}"],
    ])
    print(f"\nratio of medians: transport **{tr_p50 / echo_p50:.2f}x** (target <= 1.25x), whole infer "
          f"**{rt_p50 / echo_p50:.2f}x**; whole infer per round: " + ", ".join(f"{r:.2f}" for r in per_round))
    print(f"the echo with a runtime's copies: **{statistics.median(copies_ms) / echo_p50:.2f}x** the plain echo")


if __name__ == "__main__":
    main()
