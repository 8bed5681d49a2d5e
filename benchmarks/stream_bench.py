"""Stream throughput against the bottleneck-stage bound, and against sequential calls.

Splits a CNN where edge and cloud stages take about the same time, serves the
suffix from a worker process on loopback (one onnxruntime thread each side),
and measures in the same run, interleaved: sequential ``infer`` calls and
``stream`` with a few frames in flight. The bound is 1 / (slowest stage),
the stages being the edge prefix and the worker's round trip (encode,
network, cloud compute, decode).

    .venv/bin/python benchmarks/stream_bench.py [--frames 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edge import EdgeRuntime
from partitioner import inspect, split
from splitpoint.backends import load_session
from testbed.demo import free_port, start_worker
from testbed.models import save_demo_cnn


def _median_ms(fn, n: int = 20) -> float:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def balanced_bundle(root: Path, size: int) -> tuple[Path, str, float, float]:
    """Split at the candidate whose prefix and suffix times are closest; return both times."""
    model = save_demo_cnn(root / "cnn.onnx", size=size)
    candidates = [c for c in inspect(model).candidates if c.balanced]
    bundle = split(model, root / "bundle", at=[c.names for c in candidates], overwrite=True)
    x = {"image": np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)}
    best = None
    for s in bundle.manifest.splits:
        if not s.edge_file:
            continue
        prefix = load_session(bundle.path(s.edge_file), threads=1)
        suffix = load_session(bundle.path(s.cloud_file), threads=1)
        out = {**x, **prefix.run(x)}
        sent = {n: out[n] for n in s.sent_names}
        tp, ts = _median_ms(lambda: prefix.run(x)), _median_ms(lambda: suffix.run(sent))
        if best is None or abs(tp - ts) < abs(best[2] - best[3]):
            best = (bundle.root, s.id, tp, ts)
    return best  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=128, help="image size of the CNN")
    ap.add_argument("--in-flight", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle, split_id, prefix_ms, suffix_ms = balanced_bundle(root, args.size)
        port = free_port()
        worker = start_worker(bundle, port, root / "worker.log", args=["--threads", "1"])
        try:
            rng = np.random.default_rng(1)
            frames = [{"image": rng.standard_normal((1, 3, args.size, args.size)).astype(np.float32)} for _ in range(args.frames)]
            with EdgeRuntime(bundle, cloud=f"127.0.0.1:{port}", split=split_id, threads=1, deadline_ms=10_000) as rt:
                for x in frames[:10]:
                    rt.infer(x)
                round_trip = statistics.median(
                    (rt.infer(x), rt.last_trace.total_ms - rt.last_trace.edge_ms)[1] for x in frames[:30]
                )
                seq, pipe = [], []
                for _ in range(args.rounds):  # interleaved: the machine is shared and noisy
                    t = time.perf_counter()
                    for x in frames:
                        rt.infer(x)
                    seq.append(len(frames) / (time.perf_counter() - t))
                    t = time.perf_counter()
                    n = sum(1 for _ in rt.stream(frames, max_in_flight=args.in_flight))
                    pipe.append(n / (time.perf_counter() - t))
                fallbacks = rt.counters.fallbacks
        finally:
            worker.terminate()
            worker.wait()

    bound = 1e3 / max(prefix_ms, round_trip)
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, 2 cores shared by edge and worker")
    print(f"split {split_id}: edge prefix {prefix_ms:.2f} ms, cloud suffix compute {suffix_ms:.2f} ms, "
          f"worker round trip {round_trip:.2f} ms (encode + network + compute + decode)")
    print(f"bound 1/slowest stage: {bound:.1f} frames/s")
    seq_fps, pipe_fps = statistics.median(seq), statistics.median(pipe)
    print(f"sequential infer: {seq_fps:.1f} frames/s (median of {args.rounds})")
    print(f"stream, {args.in_flight} in flight: {pipe_fps:.1f} frames/s "
          f"= {pipe_fps / bound:.0%} of the bound, {pipe_fps / seq_fps:.2f}x sequential")
    print(f"fallbacks during the run: {fallbacks}")


if __name__ == "__main__":
    main()
