"""Worker under load: many concurrent clients against one `splitpoint serve` process.

Checks the admission queue's promise: every request is answered, either OK or
with an explicit RESOURCE_EXHAUSTED once the queue is full, p99 latency stays
bounded by the queue, and the worker's resident memory does not grow after
warm-up. Each configuration is a separate worker process on loopback; the
clients are threads of this process, each sending the demo CNN's two-tensor
cut (zstd) in a loop with a deadline, pausing 10 ms after a refusal.

    python benchmarks/worker_load.py [--clients 32] [--seconds 30] [--configs 2:32,2:8]

A configuration is MAX_INFLIGHT:MAX_QUEUE. It prints a markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from report import machine, print_table

from partitioner import split
from splitpoint import wire
from splitpoint._proto import grpc_service_pb2_grpc as pb_grpc
from splitpoint.backends import Session, load_session
from splitpoint.bundle import Bundle, segment_model_name
from testbed.demo import CUT, free_port, start_worker
from testbed.models import save_demo_cnn

WARMUP_S = 5.0
DEADLINE_S = 5.0
# A refused client pauses before its next request, as an edge does while it finishes
# locally; without it, refused clients would spin and steal the worker's CPU.
REFUSED_PAUSE_S = 0.01


@dataclass
class Run:
    inflight: int
    queue: int
    latencies_ms: list[float] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)
    rss_mib: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)
    server_ms: dict[str, float] = field(default_factory=dict)  # mean queue / compute / request time, worker's view
    seconds: float = 0.0

    def row(self, clients: int) -> list[str]:
        lat = np.array(self.latencies_ms or [np.nan])
        ok, rejected = self.codes.get("OK", 0), self.codes.get("RESOURCE_EXHAUSTED", 0)
        other = sum(n for c, n in self.codes.items() if c not in ("OK", "RESOURCE_EXHAUSTED"))
        warm = [m for t, m in self.rss_mib if t >= WARMUP_S]
        server = " / ".join(f"{self.server_ms.get(k, float('nan')):.1f}" for k in ("queue", "compute", "request"))
        return [
            f"{self.inflight}:{self.queue}", str(clients), str(ok), str(rejected), str(other),
            f"{ok / self.seconds:.0f}", f"{np.percentile(lat, 50):.1f}", f"{np.percentile(lat, 99):.1f}",
            f"{lat.max():.1f}", server, f"{warm[0]:.0f} → {warm[-1]:.0f}" if warm else "n/a",
        ]


HEADER = ["inflight:queue", "clients", "ok", "RESOURCE_EXHAUSTED", "other errors", "ok/s", "p50 ms", "p99 ms",
          "max ms", "worker mean ms: queue / compute / request", "worker RSS MiB (after warm-up → end)"]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _server_means_ms(metrics_port: int, model: str) -> dict[str, float]:
    """Mean queue wait, compute and whole-request time as the worker measured them (whole run)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
              if s.labels.get("model") == model}
    means = {}
    for key in ("queue", "compute", "request"):
        name = f"splitpoint_worker_{key}_duration_seconds"
        if values.get(f"{name}_count"):
            means[key] = values[f"{name}_sum"] / values[f"{name}_count"] * 1e3
    return means


def run(bundle: Path, workdir: Path, inflight: int, queue: int, clients: int, seconds: float) -> Run:
    port, metrics_port = free_port(), free_port()
    proc = start_worker(bundle, port, workdir / f"worker-{inflight}-{queue}.log", args=[
        "--max-inflight", str(inflight), "--max-queue", str(queue), "--metrics-port", str(metrics_port)])
    result = Run(inflight, queue)
    lock = threading.Lock()
    sp = bundle_split(bundle)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        start = time.monotonic()
        end = start + seconds

        def client(seed: int) -> None:
            request = wire.build_request(sp.model, sp.sent(seed), "zstd")[0].message()
            while time.monotonic() < end:
                t = time.perf_counter()
                try:
                    stub.ModelInfer(request, timeout=DEADLINE_S)
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                ms = (time.perf_counter() - t) * 1e3
                if code == "RESOURCE_EXHAUSTED":
                    time.sleep(REFUSED_PAUSE_S)
                if time.monotonic() - start < WARMUP_S:
                    continue
                with lock:
                    result.codes[code] = result.codes.get(code, 0) + 1
                    if code == "OK":
                        result.latencies_ms.append(ms)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        while time.monotonic() < end:
            result.rss_mib.append((time.monotonic() - start, _rss_mib(proc.pid)))
            time.sleep(1.0)
        for t in threads:
            t.join()
        result.seconds = seconds - WARMUP_S
        result.server_ms = _server_means_ms(metrics_port, sp.model)
        channel.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return result


@dataclass
class CutSplit:
    model: str
    prefix: Session
    sent_names: list[str]

    def sent(self, seed: int) -> dict[str, np.ndarray]:
        image = {"image": np.random.default_rng(seed).standard_normal((1, 3, 64, 64)).astype(np.float32)}
        available = {**image, **self.prefix.run(image)}
        return {n: available[n] for n in self.sent_names}


def bundle_split(bundle: Path) -> CutSplit:
    """The bundle's default split: its model name, its prefix, the tensors it sends."""
    b = Bundle(bundle)
    s = b.manifest.split(b.manifest.default_split)
    return CutSplit(segment_model_name(b.name, s.id), load_session(b.path(s.edge_file)), list(s.sent_names))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=30.0, help="per configuration, warm-up included")
    p.add_argument("--configs", default="2:32,2:8", help="MAX_INFLIGHT:MAX_QUEUE,... (default: 2:32,2:8)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="splitpoint-load-") as tmp:
        workdir = Path(tmp)
        bundle = split(save_demo_cnn(workdir / "democnn.onnx"), workdir / "bundle", at=[CUT]).root
        rows = []
        for config in args.configs.split(","):
            inflight, queue = (int(v) for v in config.split(":"))
            rows.append(run(bundle, workdir, inflight, queue, args.clients, args.seconds).row(args.clients))
    print(f"machine: {machine()}; {args.clients} client threads for {args.seconds:.0f} s per row "
          f"({WARMUP_S:.0f} s warm-up not counted), deadline {DEADLINE_S:.0f} s\n")
    print_table(HEADER, rows)


if __name__ == "__main__":
    main()
