"""Dynamic batching: throughput and latency of one worker with and without it, same run, interleaved.

One `splitpoint serve` process per configuration, all started at once on
loopback; measurement windows alternate between them (A, B, C, A, B, C, ...)
so drift of the machine hits every configuration alike, and each figure is
the median over the windows. In a window, N client threads send requests in
a closed loop (each sends its next request when the previous is answered);
a short unmeasured warm-up precedes each window. Two segments:

- cnn: the demo CNN cut inside its residual block (two 16x64x64 tensors sent,
  zstd), convolutions: compute grows with the rows, batching saves little;
- mlp: an 8-layer 1024-wide MLP served whole (a 4 KiB row sent raw), bound by
  reading its 32 MiB of weights at batch 1, which a batch reads once for all.

    python benchmarks/batching_bench.py [--segments cnn,mlp] [--clients 1,32] [--windows 5] [--seconds 4]

It prints a markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime
from report import machine, print_table
from worker_load import bundle_split

from partitioner import split
from splitpoint import wire
from splitpoint._proto import grpc_service_pb2_grpc as pb_grpc
from testbed.demo import CUT, free_port, start_worker
from testbed.models import mlp, save_demo_cnn

WARMUP_S = 1.0
DEADLINE_S = 30.0
COMMON = ["--max-inflight", "2", "--threads", "1", "--max-queue", "64"]
CONFIGS = {
    "unbatched": [],
    "batched, max 8, no delay": ["--max-batch", "8"],
    "batched, max 8, 2 ms delay": ["--max-batch", "8", "--batch-delay-ms", "2"],
}


MLP_WIDTH, MLP_LAYERS = 1024, 8


def cnn_workload(workdir: Path) -> tuple[str, Path, Callable[[int], dict[str, np.ndarray]], str]:
    """The demo CNN's two-tensor cut: model name, bundle, tensors per client seed, codec."""
    bundle = split(save_demo_cnn(workdir / "democnn.onnx"), workdir / "cnn", at=[CUT]).root
    sp = bundle_split(bundle)
    return sp.model, bundle, sp.sent, "zstd"


def mlp_workload(workdir: Path) -> tuple[str, Path, Callable[[int], dict[str, np.ndarray]], str]:
    """An MLP whose weights (32 MiB) outweigh a row's compute: the case dynamic batching is for."""
    onnx.save(mlp(MLP_WIDTH, MLP_LAYERS), workdir / "mlp.onnx")
    bundle = split(workdir / "mlp.onnx", workdir / "mlp", at=[["r3"]], shapes={"x": [1, MLP_WIDTH]}).root
    sent = lambda seed: {"x": np.random.default_rng(seed).standard_normal((1, MLP_WIDTH)).astype(np.float32)}
    return "mlp.cloud", bundle, sent, "raw"


WORKLOADS = {"cnn": cnn_workload, "mlp": mlp_workload}


def window(address: str, requests: list, seconds: float) -> tuple[float, list[float]]:
    """Requests per second answered OK and their latencies (ms), for len(requests) closed-loop clients."""
    latencies: list[list[float]] = [[] for _ in requests]
    errors: list[str] = []
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        start = threading.Barrier(len(requests) + 1)
        measure_from = end = 0.0

        def client(i: int) -> None:
            start.wait()
            while (now := time.monotonic()) < end:
                t = time.perf_counter()
                try:
                    stub.ModelInfer(requests[i], timeout=DEADLINE_S)
                except grpc.RpcError as e:
                    errors.append(e.code().name)
                    continue
                if now >= measure_from:
                    latencies[i].append((time.perf_counter() - t) * 1e3)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        measure_from = time.monotonic() + WARMUP_S
        end = measure_from + seconds
        start.wait()
        for t in threads:
            t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {sorted(set(errors))}")
    flat = [ms for per_client in latencies for ms in per_client]
    return len(flat) / seconds, flat


def measure(workdir: Path, segment: str, client_counts: list[int], windows: int, seconds: float) -> list[list[str]]:
    """Table rows for one segment: every configuration at every client count."""
    model, bundle, sent, codec = WORKLOADS[segment](workdir)
    workers: dict[str, tuple[subprocess.Popen, str]] = {}
    rows = []
    try:
        for i, (name, flags) in enumerate(CONFIGS.items()):
            port = free_port()
            proc = start_worker(bundle, port, workdir / f"{segment}-worker{i}.log", args=[*COMMON, *flags])
            workers[name] = (proc, f"127.0.0.1:{port}")
        for clients in client_counts:
            requests = [wire.build_request(model, sent(seed), codec)[0].message() for seed in range(clients)]
            results: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in CONFIGS}
            for _ in range(windows):
                for name, (_, address) in workers.items():
                    results[name].append(window(address, requests, seconds))
            base = float(np.median([rps for rps, _ in results["unbatched"]]))
            for name, runs in results.items():
                rps = float(np.median([r for r, _ in runs]))
                p50 = float(np.median([np.percentile(lat, 50) for _, lat in runs]))
                p99 = float(np.median([np.percentile(lat, 99) for _, lat in runs]))
                spread = f"{min(r for r, _ in runs):.0f}–{max(r for r, _ in runs):.0f}"
                rows.append([f"{segment} ({model})", str(clients), name, f"{rps:.0f}", spread,
                             f"{rps / base:.2f}×", f"{p50:.2f}", f"{p99:.2f}"])
    finally:
        for proc, _ in workers.values():
            proc.terminate()
            proc.wait(timeout=30)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--segments", default="cnn,mlp", help=f"segments to measure, of {', '.join(WORKLOADS)} (default: all)")
    p.add_argument("--clients", default="1,32", help="client counts, comma-separated (default: 1,32)")
    p.add_argument("--windows", type=int, default=5, help="measured windows per configuration and client count")
    p.add_argument("--seconds", type=float, default=4.0, help="length of one window, warm-up not included")
    args = p.parse_args()
    client_counts = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="splitpoint-batching-") as tmp:
        rows = [row for segment in args.segments.split(",")
                for row in measure(Path(tmp), segment, client_counts, args.windows, args.seconds)]
    print(f"machine: {machine()}, onnxruntime {onnxruntime.__version__}, grpcio {grpc.__version__}; "
          f"worker flags {' '.join(COMMON)}; {args.windows} windows of {args.seconds:g} s per row, interleaved\n")
    header = ["segment", "clients", "worker", "ok/s (median)", "ok/s (min–max)", "vs unbatched", "p50 ms", "p99 ms"]
    print_table(header, rows)


if __name__ == "__main__":
    main()
