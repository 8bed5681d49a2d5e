"""Side by side: `splitpoint serve`, MLServer and Triton, all running the same ONNX segment with onnxruntime.

The segment is the cloud half of a torch-exported ResNet-like network (testbed.zoo),
cut by the partitioner at a single tensor. Every server speaks the Open Inference
Protocol over gRPC and gets byte-identical requests (one ModelInferRequest,
serialized once, sent as raw bytes) from the same closed-loop clients: CLIENTS
threads of this process, each on its own channel, sending its next request as
soon as the previous one is answered. Rounds rotate through the servers (a
different one goes first each round) and the table gives the median over
rounds, so all see the same machine. Each answer's status is checked; one
answer of each server is compared with local onnxruntime.

MLServer and Triton have dependencies of their own, so each runs from its own
virtual environment under /tmp, made on first use with the interpreter running
this script (see ENVS). Each serves the file with a dozen lines of Python that
open an onnxruntime session with the worker's options (intra-op threads, graph
optimisation all, no spinning) and run it: an MLServer ``MLModel`` (RUNTIME),
run in ``--mlserver-workers`` inference processes (its ``parallel_workers``),
and a Triton model bound with nvidia-pytriton (PYTRITON: Triton 2.51's C++
server and scheduler, the callable run in a Python process of its own), with
``--triton-instances`` model instances. The worker runs ``--max-inflight``
executions at once. All default to 2, one per core.

    .venv/bin/python benchmarks/oip_side_by_side.py [--rounds 7] [--seconds 5] [--clients 8] [--rows 1]
        [--servers splitpoint,MLServer,Triton]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import venv
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from report import machine, print_table

import splitpoint
from partitioner import inspect, split
from splitpoint import wire
from splitpoint.backends import load_session
from splitpoint.bundle import Bundle, segment_model_name
from splitpoint.compare import difference
from testbed import zoo
from testbed.demo import free_port, start_worker

INFER = "/inference.GRPCInferenceService/ModelInfer"
CALL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Env:
    """A server's own virtual environment, made on first use."""

    path: Path
    packages: tuple[str, ...]

    def python(self) -> Path:
        python, done = self.path / "bin" / "python", self.path / ".installed"
        if not done.exists():
            print(f"installing {' '.join(self.packages)} into {self.path} (once)", file=sys.stderr)
            venv.create(self.path, with_pip=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", *self.packages], check=True)
            done.touch()
        return python

    def version(self, package: str) -> str:
        code = f"import importlib.metadata as m; print(m.version({package!r}))"
        return subprocess.run([str(self.python()), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


ENVS = {
    # uvloop 0.22 raises in asyncio.get_event_loop() without a running loop, which MLServer 1.7.1's
    # inference worker processes call at start: with it every parallel worker dies at once.
    "MLServer": Env(Path("/tmp/splitpoint-oip-mlserver"), ("mlserver==1.7.1", "uvloop<0.22", f"onnxruntime=={ort.__version__}")),
    "Triton": Env(Path("/tmp/splitpoint-oip-pytriton"), ("nvidia-pytriton==0.7.0", f"onnxruntime=={ort.__version__}")),
}
VERSIONS = {"MLServer": ("mlserver", "onnxruntime"), "Triton": ("nvidia-pytriton", "onnxruntime")}

RUNTIME = '''
"""An MLServer runtime that runs one ONNX file with onnxruntime."""
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.settings.parameters.extra["threads"]
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(self.settings.parameters.uri, opts, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        values = self._session.run(self._outputs, feeds)
        return InferenceResponse(model_name=self.name,
                                 outputs=[NumpyCodec.encode_output(n, v) for n, v in zip(self._outputs, values)])
'''


PYTRITON = '''
"""Triton, through nvidia-pytriton, serving one ONNX file with onnxruntime. Arguments: FILE NAME THREADS INSTANCES PORTS."""
import sys

import numpy as np
import onnxruntime as ort
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

path, name, threads, instances = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
grpc_port, http_port, metrics_port = map(int, sys.argv[5:8])
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
opts.inter_op_num_threads = 1
opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
outputs = [o.name for o in session.get_outputs()]


def spec(arg):
    assert arg.type == "tensor(float)", arg.type
    return Tensor(name=arg.name, dtype=np.float32, shape=tuple(d if isinstance(d, int) else -1 for d in arg.shape))


def infer(requests):
    return [dict(zip(outputs, session.run(outputs, dict(r)))) for r in requests]


config = TritonConfig(grpc_address="127.0.0.1", grpc_port=grpc_port, http_address="127.0.0.1", http_port=http_port,
                      metrics_address="127.0.0.1", metrics_port=metrics_port)
with Triton(config=config) as triton:
    triton.bind(model_name=name, infer_func=[infer] * instances, inputs=[spec(a) for a in session.get_inputs()],
                outputs=[spec(a) for a in session.get_outputs()], config=ModelConfig(batching=False))
    triton.serve()
'''


def make_segment(root: Path, rows: int) -> tuple[Bundle, str, dict[str, np.ndarray]]:
    """The ResNet-like bundle, the split served, and the tensors an edge sends for ``rows`` images."""
    model = zoo.export_onnx(zoo.resnet_like(), root / "resnet.onnx", dynamo=False)
    cut = next(c for c in inspect(model).candidates if len(c.tensors) == 1 and c.balanced)
    bundle = split(model, root / "bundle", at=[cut.names])
    s = next(s for s in bundle.manifest.splits if s.edge_file)
    x = {"x": np.random.default_rng(0).standard_normal((rows, 3, 64, 64)).astype(np.float32)}
    sent = load_session(bundle.path(s.edge_file)).run(x)
    return bundle, s.id, {n: sent[n] for n in s.sent_names}


def start_mlserver(root: Path, name: str, segment: Path, workers: int, threads: int) -> tuple[subprocess.Popen, int]:
    repo = root / "mlserver"
    (repo / name).mkdir(parents=True)
    (repo / "oip_runtime.py").write_text(RUNTIME)
    port = free_port()
    settings = {"grpc_port": port, "http_port": free_port(), "metrics_port": free_port(), "host": "127.0.0.1",
                "parallel_workers": workers, "debug": False, "grpc_max_message_length": 512 << 20}
    (repo / "settings.json").write_text(json.dumps(settings))
    (repo / name / "model-settings.json").write_text(json.dumps({
        "name": name, "implementation": "oip_runtime.OnnxRuntime",
        "parameters": {"uri": str(segment), "extra": {"threads": threads}}}))
    mlserver = ENVS["MLServer"].python().parent / "mlserver"
    proc = subprocess.Popen([str(mlserver), "start", str(repo)], cwd=repo, stdout=open(root / "mlserver.log", "wb"),
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(repo)}, start_new_session=True)
    return proc, port


def start_triton(root: Path, name: str, segment: Path, instances: int, threads: int) -> tuple[subprocess.Popen, int]:
    """Triton's Python-backend stub links libpython3.11.so.1.0 and would find the system's (another 3.11
    patch release than the venv's standard library); LD_LIBRARY_PATH points it at this interpreter's."""
    script = root / "pytriton_serve.py"
    script.write_text(PYTRITON)
    port = free_port()
    ports = [str(p) for p in (port, free_port(), free_port())]
    env = {**os.environ, "LD_LIBRARY_PATH": sysconfig.get_config_var("LIBDIR")}
    proc = subprocess.Popen([str(ENVS["Triton"].python()), str(script), str(segment), name, str(threads), str(instances),
                             *ports], stdout=open(root / "triton.log", "wb"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    return proc, port


def stop(proc: subprocess.Popen, group: bool) -> None:
    """SIGTERM to the server, or to its whole process group (MLServer's workers, Triton's server and stubs)."""
    if group:
        with contextlib.suppress(ProcessLookupError):  # the group can outlive its leader: stop it even then
            os.killpg(proc.pid, signal.SIGTERM)
    elif proc.poll() is None:
        proc.terminate()
    proc.wait(30)


def wait_ready(address: str, name: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Until the server says the model is ready (OIP ModelReady); its log's end if it exits instead."""
    from splitpoint._proto import grpc_service_pb2 as pb
    from splitpoint._proto import grpc_service_pb2_grpc as pb_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"{address} exited with {proc.returncode}; the end of {log.name}:\n" + "\n".join(tail))
            try:
                if stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=1).ready:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{address}: model {name} not ready after {timeout:.0f} s")
            time.sleep(0.2)


@dataclass
class Round:
    answered: int
    failed: int
    seconds: float
    latencies_ms: list[float]

    @property
    def throughput(self) -> float:
        return self.answered / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))


def load(address: str, request: bytes, clients: int, seconds: float) -> Round:
    """``clients`` closed loops sending ``request`` for ``seconds``; latencies of the OK answers."""
    stop = time.monotonic() + seconds
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients

    def client(i: int) -> None:
        with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 512 << 20)]) as channel:
            call = channel.unary_unary(INFER)  # bytes in, bytes out: every server gets the same bytes
            while time.monotonic() < stop:
                start = time.perf_counter()
                try:
                    call(request, timeout=CALL_TIMEOUT_S)
                except grpc.RpcError:
                    failures[i] += 1
                    continue
                latencies[i].append((time.perf_counter() - start) * 1e3)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [x for each in latencies for x in each]
    return Round(len(every), sum(failures), time.monotonic() - start, every)


def check_answer(address: str, request: bytes, want: dict[str, np.ndarray]) -> tuple[str, str]:
    """The server's name and version (OIP ServerMetadata), and how far one answer is from local onnxruntime."""
    from splitpoint._proto import grpc_service_pb2 as pb
    from splitpoint._proto import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        raw = channel.unary_unary(INFER)(request, timeout=CALL_TIMEOUT_S)
        meta = pb_grpc.GRPCInferenceServiceStub(channel).ServerMetadata(pb.ServerMetadataRequest(), timeout=CALL_TIMEOUT_S)
    got = wire.read_response(pb.ModelInferResponse.FromString(raw))
    d = difference(want, got)
    if not d.ok:
        raise SystemExit(f"{address} answered differently from local onnxruntime: {d}")
    return f"{meta.name} {meta.version}", "exact" if d.exact else f"max rel {d.max_rel:.1e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of one round on one server")
    ap.add_argument("--clients", type=int, default=8, help="closed-loop clients, each on its own channel")
    ap.add_argument("--rows", type=int, default=1, help="images per request (the segment's batch dimension)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads of each session")
    ap.add_argument("--inflight", type=int, default=2, help="the worker's --max-inflight")
    ap.add_argument("--mlserver-workers", type=int, default=2, help="MLServer's parallel_workers")
    ap.add_argument("--triton-instances", type=int, default=2, help="Triton model instances")
    ap.add_argument("--servers", default="splitpoint,MLServer,Triton", help="which to compare, comma-separated")
    args = ap.parse_args()
    chosen = args.servers.split(",")
    others = [s for s in chosen if s != "splitpoint"]
    unknown = set(others) - set(ENVS)
    if unknown or "splitpoint" not in chosen:
        ap.error(f"--servers: splitpoint and any of {', '.join(ENVS)}, not {args.servers}")
    for s in others:
        ENVS[s].python()  # installed before anything starts

    starters = {"MLServer": lambda: start_mlserver(root, name, segment, args.mlserver_workers, args.threads),
                "Triton": lambda: start_triton(root, name, segment, args.triton_instances, args.threads)}
    with tempfile.TemporaryDirectory(prefix="splitpoint-oip-") as tmp:
        root = Path(tmp)
        bundle, split_id, sent = make_segment(root, args.rows)
        name = segment_model_name(bundle.name, split_id)
        segment = bundle.path(bundle.manifest.split(split_id).cloud_file)
        want = load_session(segment, threads=args.threads).run(sent)
        request = wire.build_request(name, sent)[0].to_bytes()
        segment_kib = segment.stat().st_size / 1024

        port = free_port()
        procs = {"splitpoint": start_worker([bundle.root], port, root / "worker.log", args=[
            "--threads", str(args.threads), "--max-inflight", str(args.inflight), "--max-queue", str(4 * args.clients)])}
        servers = {"splitpoint": f"127.0.0.1:{port}"}
        try:
            for s in others:
                procs[s], other_port = starters[s]()
                servers[s] = f"127.0.0.1:{other_port}"
                wait_ready(servers[s], name, procs[s], root / f"{s.lower()}.log")
            agreement = {s: check_answer(a, request, want) for s, a in servers.items()}
            for address in servers.values():  # warm-up, not counted
                load(address, request, args.clients, min(args.seconds, 2.0))
            rounds: dict[str, list[Round]] = {s: [] for s in servers}
            names = list(servers)
            for r in range(args.rounds):
                for s in names[r % len(names):] + names[: r % len(names)]:  # each round, another goes first
                    rounds[s].append(load(servers[s], request, args.clients, args.seconds))
        finally:
            for s, proc in procs.items():
                stop(proc, group=s != "splitpoint")

    print(f"machine: {machine()}")
    print(f"onnxruntime {ort.__version__}, grpcio {grpc.__version__}, splitpoint {splitpoint.__version__}; servers say: "
          + ", ".join(agreement[s][0] for s in servers) + "; "
          + "; ".join(f"{s} venv: {', '.join(f'{p} {ENVS[s].version(p)}' for p in VERSIONS[s])}" for s in others))
    print(f"segment: {name} ({segment_kib:.0f} KiB), request "
          f"{', '.join(f'{n}{list(a.shape)}' for n, a in sent.items())} = {len(request) / 1024:.1f} KiB; "
          f"{args.clients} clients, {args.rounds} rounds x {args.seconds:g} s per server, "
          f"onnxruntime threads {args.threads}, worker --max-inflight {args.inflight}, "
          f"MLServer parallel_workers {args.mlserver_workers}, Triton instances {args.triton_instances}")
    header = ["server", "answers vs local ORT", "req/s (median)", "p50 ms", "p99 ms", "req/s per round", "failed"]
    rows = []
    for s, rs in rounds.items():
        rows.append([s, agreement[s][1], f"{statistics.median(r.throughput for r in rs):.0f}",
                     f"{statistics.median(r.percentile(50) for r in rs):.2f}",
                     f"{statistics.median(r.percentile(99) for r in rs):.2f}",
                     " ".join(f"{r.throughput:.0f}" for r in rs), str(sum(r.failed for r in rs))])
    print_table(header, rows)


if __name__ == "__main__":
    main()
