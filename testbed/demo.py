"""``splitpoint demo``: the whole loop on one machine, with zero configuration.

Builds a small CNN with a skip connection, cuts it across the skip (two
tensors cross), starts a worker as a separate process on a free loopback
port, runs requests split, kills the worker, keeps answering locally,
restarts it and resumes splitting. Every answer is checked against the local
full model.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge import EdgeRuntime
from edge.client import ClientTLS, WorkerClient
from partitioner import split
from splitpoint.compare import difference
from testbed.models import save_demo_cnn

CUT = ["block.relu1", "stem.relu"]  # inside the residual block: the branch and the skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(
    bundles: Path | list[Path],
    port: int,
    log_path: Path,
    timeout: float = 60.0,
    args: Sequence[str] = (),
    tls: ClientTLS | None = None,
) -> subprocess.Popen:
    """Start ``splitpoint serve`` as a separate process and wait until it is SERVING.

    ``args`` are extra ``serve`` flags; ``tls`` is how to reach a worker started with TLS flags.
    """
    proc = spawn_worker(bundles, port, log_path, args)
    wait_serving(proc, port, log_path, timeout, tls)
    return proc


def spawn_worker(
    bundles: Path | list[Path],
    port: int,
    log_path: Path,
    args: Sequence[str] = (),
    launcher: Sequence[str] = (sys.executable, "-m", "splitpoint"),
) -> subprocess.Popen:
    """Start ``LAUNCHER serve BUNDLES --port PORT ARGS`` with its output in ``log_path``; it is not ready yet."""
    paths = [str(b) for b in (bundles if isinstance(bundles, list) else [bundles])]
    with open(log_path, "ab") as log:
        return subprocess.Popen([*launcher, "serve", *paths, "--port", str(port), *args],
                                stdout=log, stderr=subprocess.STDOUT)


def wait_serving(proc: subprocess.Popen, port: int, log_path: Path, timeout: float = 60.0,
                 tls: ClientTLS | None = None) -> None:
    """Wait until the worker ``proc`` on ``port`` answers health checks as SERVING; kill it if it does not."""
    client = WorkerClient(f"127.0.0.1:{port}", tls=tls)
    try:
        deadline = time.monotonic() + timeout
        while not client.serving(timeout=0.5):
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"worker did not become ready in {timeout:.0f}s; see {log_path}")
            time.sleep(0.05)
    finally:
        client.close()


def stop_worker(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM (the worker drains), then SIGKILL if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


@dataclass
class Phase:
    name: str
    split: str
    latencies_ms: list[float] = field(default_factory=list)
    bytes_raw: int = 0
    bytes_encoded: int = 0
    fallbacks: int = 0
    cloud: int = 0
    mismatches: int = 0
    unanswered: int = 0

    def row(self) -> list[str]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([float("nan")])
        n = len(self.latencies_ms) + self.unanswered
        return [
            self.name,
            self.split,
            str(n),
            f"{np.percentile(lat, 50):.2f}",
            f"{np.percentile(lat, 95):.2f}",
            f"{self.bytes_raw / max(n, 1) / 1024:.1f}",
            f"{self.bytes_encoded / max(n, 1) / 1024:.1f}",
            str(self.cloud),
            str(self.fallbacks),
            "yes" if self.mismatches == 0 and self.unanswered == 0 else f"NO ({self.mismatches + self.unanswered})",
        ]


HEADER = ["phase", "split", "requests", "p50 ms", "p95 ms", "cut KiB/req", "sent KiB/req", "cloud", "fallbacks", "all match"]


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    line = lambda r: "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(HEADER), line(["-" * w for w in widths]), *map(line, rows)])


def _run(rt: EdgeRuntime, local: EdgeRuntime, phase: Phase, requests: int, rng: np.random.Generator,
         until_cloud: bool = False, max_wait_s: float = 30.0) -> None:
    """Send ``requests`` requests (or, with ``until_cloud``, until one goes to the worker)."""
    start = time.monotonic()
    count = 0
    while (count < requests) if not until_cloud else (phase.cloud == 0 and time.monotonic() - start < max_wait_s):
        count += 1
        x = {"image": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)}
        try:
            y = rt.infer(x)
        except Exception as e:  # the demo's claim is that this never happens
            print(f"  request got no answer: {e}")
            phase.unanswered += 1
            continue
        t = rt.last_trace
        phase.latencies_ms.append(t.total_ms)
        phase.bytes_raw += t.bytes_raw
        phase.bytes_encoded += t.bytes_encoded if t.path == "cloud" else 0
        phase.cloud += t.path == "cloud"
        phase.fallbacks += t.path == "fallback"
        if not difference(local.infer(x), y).ok:
            phase.mismatches += 1
        if until_cloud:
            time.sleep(0.05)


def run_demo(requests: int = 40, workdir: str | None = None) -> int:
    tmp = None if workdir else tempfile.TemporaryDirectory(prefix="splitpoint-demo-")
    root = Path(workdir or tmp.name)  # type: ignore[union-attr]
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    print(f"[1/5] building a small CNN with a skip connection (onnx.helper) in {root}")
    model = save_demo_cnn(root / "democnn.onnx")
    print(f"[2/5] splitting it across the skip connection at {','.join(CUT)}")
    bundle_dir = root / "bundle"
    bundle = split(model, bundle_dir, at=[CUT], overwrite=True, log=lambda m: print(f"      {m}"))
    sp = bundle.manifest.split(bundle.manifest.default_split)
    print(f"      split {sp.id!r}: {len(sp.cut)} tensors cross ({', '.join(t.name for t in sp.cut)})")

    port = free_port()
    address = f"127.0.0.1:{port}"
    worker_log = root / "worker.log"
    print(f"[3/5] starting the worker: splitpoint serve {bundle_dir} --port {port}  (log: {worker_log})")
    worker = start_worker(bundle_dir, port, worker_log)
    phases: list[Phase] = []
    try:
        with EdgeRuntime(bundle_dir, cloud=address, deadline_ms=2000) as rt, EdgeRuntime(bundle_dir, split="local") as local:
            print(f"[4/5] {requests} requests split across edge and worker")
            phases.append(Phase("worker up", sp.id))
            _run(rt, local, phases[-1], requests, rng)

            print(f"      killing the worker (SIGKILL, pid {worker.pid}); {requests} requests")
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            phases.append(Phase("worker killed", sp.id))
            _run(rt, local, phases[-1], requests, rng)

            print("      restarting the worker; requests continue until the health probe brings splitting back")
            worker = start_worker(bundle_dir, port, worker_log)
            phases.append(Phase("worker restarted", sp.id))
            _run(rt, local, phases[-1], requests, rng, until_cloud=True)

            print(f"      {requests} more requests")
            phases.append(Phase("recovered", sp.id))
            _run(rt, local, phases[-1], requests, rng)
            counters, codec = rt.counters, rt.codec.spec
    finally:
        stop_worker(worker)
        if tmp is not None:
            tmp.cleanup()

    print("[5/5] results: latency of the whole infer() call; cut = raw bytes of the cut tensors,")
    print(f"      sent = their encoded bytes that reached the worker ({codec}), both per request\n")
    print(format_table([p.row() for p in phases]))
    reasons = ", ".join(f"{r}: {n}" for r, n in counters.fallback_reasons.items()) or "none"
    print(f"\nfallback reasons: {reasons}")
    bad = sum(p.mismatches + p.unanswered for p in phases)
    resumed = phases[-1].cloud == len(phases[-1].latencies_ms) and phases[-1].cloud > 0
    if bad or not resumed:
        print(f"\nFAILED: {bad} request(s) differed from the local full model or got no answer"
              + ("" if resumed else "; splitting did not resume after the restart"))
        return 1
    print("\nOK: every request was answered and matched the local full model; splitting resumed after the restart.")
    return 0


if __name__ == "__main__":
    sys.exit(run_demo())
