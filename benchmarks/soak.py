"""Soak: many concurrent edge clients against one worker for minutes, on loopback.

Each client is a thread with its own ``EdgeRuntime`` (the demo CNN cut across its
skip connection, lossless ``shuffle-zstd:1``), calling ``infer`` in a loop with a
deadline and checking every answer against the local full model. One
``splitpoint serve`` process answers them all. The worker's resident memory
(``VmRSS``) is sampled every second. The run passes when

- every call returned the full model's answer (no exception, no mismatch);
- no request fell back for an unexplained reason (the worker refusing with
  RESOURCE_EXHAUSTED when its queue is full, and the circuit that opens after
  such refusals, are explained; a missed deadline or a lost worker is not);
- the worker's RSS after warm-up grows by less than ``--max-growth-mib`` (and its
  fitted slope stays under ``--max-slope-mib-per-min``);
- the p99 latency of ``infer`` stays under ``--p99-ms``.

    python benchmarks/soak.py --minutes 10 [--clients 16] [--deadline-ms 2000]

It prints a Markdown table and exits 1 when a criterion fails. tests/test_load.py
runs the same engine for ~30 s in CI.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge import EdgeRuntime  # noqa: E402
from splitpoint.compare import difference  # noqa: E402
from testbed.demo import CUT, free_port, start_worker  # noqa: E402

EXPLAINED = {"worker overloaded", "circuit open"}  # the worker's refusal when its queue is full, and what follows it
FRAMES = 16


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class Criteria:
    max_growth_mib: float = 32.0
    max_slope_mib_per_min: float = 4.0
    p99_ms: float = 1500.0


@dataclass
class SoakResult:
    clients: int
    seconds: float
    warmup_s: float
    latencies_ms: list[float] = field(default_factory=list)  # after warm-up
    requests: int = 0
    cloud: int = 0
    reasons: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # exceptions and wrong answers
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB) of the worker
    worker_alive: bool = True

    @property
    def unexplained(self) -> Counter:
        return Counter({r: n for r, n in self.reasons.items() if r not in EXPLAINED})

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def rss_after_warmup(self) -> list[tuple[float, float]]:
        return [(t, m) for t, m in self.rss if t >= self.warmup_s]

    def growth_mib(self) -> float:
        after = self.rss_after_warmup()
        return after[-1][1] - after[0][1] if len(after) >= 2 else 0.0

    def slope_mib_per_min(self) -> float:
        after = self.rss_after_warmup()
        if len(after) < 3:
            return 0.0
        t, m = np.array(after).T
        return float(np.polyfit(t / 60, m, 1)[0])

    def failures(self, c: Criteria) -> list[str]:
        """What failed, in words; empty when the run passed."""
        out = []
        if self.errors:
            out.append(f"{len(self.errors)} call(s) failed or answered wrong, e.g. {self.errors[0]}")
        if self.unexplained:
            out.append(f"unexplained fallbacks: {dict(self.unexplained)}")
        if not self.worker_alive:
            out.append("the worker died")
        if self.growth_mib() > c.max_growth_mib or self.slope_mib_per_min() > c.max_slope_mib_per_min:
            out.append(f"worker RSS grew {self.growth_mib():.1f} MiB after warm-up "
                       f"({self.slope_mib_per_min():.2f} MiB/min fitted)")
        if not self.latencies_ms or self.p(99) > c.p99_ms:
            out.append(f"p99 {self.p(99):.0f} ms over {c.p99_ms:.0f} ms")
        return out

    def table(self) -> str:
        after = self.rss_after_warmup()
        rows = [
            ("clients (threads, one EdgeRuntime each)", str(self.clients)),
            ("duration (warm-up)", f"{self.seconds:.0f} s ({self.warmup_s:.0f} s)"),
            ("requests answered / to the worker", f"{self.requests} / {self.cloud}"),
            ("throughput", f"{self.requests / max(self.seconds, 1e-9):.0f} req/s"),
            ("fallbacks by reason", ", ".join(f"{r}: {n}" for r, n in self.reasons.items()) or "none"),
            ("exceptions or wrong answers", str(len(self.errors))),
            ("latency p50 / p99 / max (after warm-up)", f"{self.p(50):.1f} / {self.p(99):.1f} / {self.p(100):.1f} ms"),
            ("worker RSS after warm-up → end (max)", f"{after[0][1]:.0f} → {after[-1][1]:.0f} MiB "
             f"({max(m for _, m in after):.0f})" if after else "n/a"),
            ("worker RSS slope after warm-up", f"{self.slope_mib_per_min():+.2f} MiB/min"),
        ]
        return "\n".join(["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def run_soak(bundle: Path, address: str, worker_pid: int, clients: int, seconds: float, warmup_s: float,
             deadline_ms: float, codec: str = "shuffle-zstd:1") -> SoakResult:
    """``clients`` edge threads against the worker at ``address`` for ``seconds``; the worker's RSS sampled each second."""
    rng = np.random.default_rng(0)
    frames = [{"image": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)} for _ in range(FRAMES)]
    with EdgeRuntime(bundle, split="local") as local:
        want = [local.infer(x) for x in frames]
    result = SoakResult(clients, seconds, warmup_s)
    lock = threading.Lock()
    start = time.monotonic()
    stop = threading.Event()

    def client(k: int) -> None:
        try:
            rt = EdgeRuntime(bundle, cloud=address, deadline_ms=deadline_ms, codec=codec)
        except Exception as e:  # counted: a client that cannot start is a failure
            with lock:
                result.errors.append(f"client {k} did not start: {e!r}")
            return
        with rt:
            i = k
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    y = rt.infer(frames[i % FRAMES])
                    ok = difference(want[i % FRAMES], y).ok
                    error = None if ok else f"wrong answer for frame {i % FRAMES}"
                except Exception as e:  # the claim is that this never happens
                    error = repr(e)
                took = (time.perf_counter() - t0) * 1e3
                trace = rt.last_trace
                with lock:
                    result.requests += 1
                    if error:
                        result.errors.append(error)
                    elif trace.path == "cloud":
                        result.cloud += 1
                    elif trace.fallback_reason:
                        result.reasons[trace.fallback_reason.split(":")[0]] += 1
                    if time.monotonic() - start >= warmup_s:
                        result.latencies_ms.append(took)
                i += clients

    threads = [threading.Thread(target=client, args=(k,), name=f"soak-client-{k}", daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    while (elapsed := time.monotonic() - start) < seconds:
        try:
            result.rss.append((elapsed, rss_mib(worker_pid)))
        except (OSError, RuntimeError):
            result.worker_alive = False
            break
        time.sleep(min(1.0, max(seconds - elapsed, 0.0)))
    stop.set()
    for t in threads:
        t.join(timeout=deadline_ms / 1e3 + 30)
    result.seconds = time.monotonic() - start
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long to run (default: 10)")
    p.add_argument("--warmup-s", type=float, default=30.0, help="seconds not counted for latency and memory (default: 30)")
    p.add_argument("--clients", type=int, default=16, help="concurrent edge clients (default: 16)")
    p.add_argument("--deadline-ms", type=float, default=2000.0, help="each request's budget (default: 2000)")
    p.add_argument("--p99-ms", type=float, default=Criteria.p99_ms)
    p.add_argument("--max-growth-mib", type=float, default=Criteria.max_growth_mib)
    p.add_argument("--max-slope-mib-per-min", type=float, default=Criteria.max_slope_mib_per_min)
    p.add_argument("--serve-args", default="", help="extra `splitpoint serve` flags, e.g. '--max-queue 8'")
    p.add_argument("--rss-csv", type=Path, help="write the worker's RSS samples (seconds, MiB) to this CSV file")
    args = p.parse_args(argv)
    from partitioner import split
    from testbed.models import save_demo_cnn

    with tempfile.TemporaryDirectory(prefix="splitpoint-soak-") as tmp:
        root = Path(tmp)
        bundle = split(save_demo_cnn(root / "democnn.onnx"), root / "bundle", at=[CUT]).root
        port = free_port()
        worker = start_worker(bundle, port, root / "worker.log", args=args.serve_args.split())
        try:
            result = run_soak(bundle, f"127.0.0.1:{port}", worker.pid, args.clients, args.minutes * 60, args.warmup_s,
                              args.deadline_ms)
        finally:
            worker.kill()
            worker.wait()
        log_errors = [line for line in (root / "worker.log").read_text().splitlines() if " ERROR " in line]
    if args.rss_csv:
        args.rss_csv.write_text("seconds,rss_mib\n" + "".join(f"{t:.1f},{m:.1f}\n" for t, m in result.rss))
    print(result.table())
    failures = result.failures(Criteria(args.max_growth_mib, args.max_slope_mib_per_min, args.p99_ms))
    failures += [f"worker logged {len(log_errors)} error(s), e.g. {log_errors[0]}"] if log_errors else []
    print("\n" + ("FAILED: " + "; ".join(failures) if failures else "OK: nothing lost, memory flat, p99 within bound"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
