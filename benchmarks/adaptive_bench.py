"""Adaptive split on a link that changes mid-run, against every fixed split, in the same run.

A ResNet-18-like CNN (random weights) is split with ``--candidates auto`` from profiles measured
here: the edge's under the same CPU quota the edge runs with (a slow device),
the cloud's with the worker's thread count. The worker runs as its own
process behind a link proxy process; the edge (this process) runs on a
fraction of a core. The link goes through phases (fast, slow, crawling,
fast again); in each, every request is sent by the adaptive runtime
(``split="auto"``) and by one pinned runtime per candidate split, in rotating
order, so all strategies see the same link at the same time.

For each phase the adaptive runtime's mean latency is compared with the best
fixed split's (target: within 10 %), and the requests it needed after the
change to settle on its final choice are counted.

    .venv/bin/python benchmarks/adaptive_bench.py [--edge-cpu 0.25] [--requests 20] \\
        [--phase 200mbit/4ms --phase 8mbit/20ms ...] [--out benchmarks/adaptive.md]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from report import machine, print_table

from edge import EdgeRuntime
from partitioner import profile, split
from splitpoint.cost import Link
from testbed.demo import free_port, start_worker
from testbed.device import CpuLimit
from testbed.linkproxy import LinkProcess
from testbed.zoo import export_onnx, resnet_like

DEFAULT_PHASES = ["200mbit/4ms", "8mbit/20ms", "1mbit/40ms", "50mbit/10ms"]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_bundle(root: Path, size: int, width: int, edge_cpu: float, worker_threads: int) -> Path:
    model = export_onnx(resnet_like(width), root / "resnet.onnx", dynamo=False, input_shape=(1, 3, size, size))
    with CpuLimit(edge_cpu) as device:
        _log(f"profiling the edge ({edge_cpu} CPU, {device.method})")
        edge = profile(model, threads=1, runs=10)
    _log(f"profiling the cloud ({worker_threads} threads)")
    cloud = profile(model, threads=worker_threads, runs=10)
    bundle = split(model, root / "bundle", at=None, candidates="auto", edge_profile=edge, cloud_profile=cloud,
                   overwrite=True, log=_log)
    return bundle.root


def settle_after(choices: list[str]) -> int:
    """Requests before the adaptive runtime took its final choice of the phase for good."""
    final = choices[-1]
    n = len(choices)
    while n > 0 and choices[n - 1] == final:
        n -= 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edge-cpu", type=float, default=0.25, help="CPU quota of the edge, in cores")
    ap.add_argument("--worker-threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=160, help="image size of the CNN")
    ap.add_argument("--width", type=int, default=64, help="channels of the CNN's first stage (64: ResNet-18)")
    ap.add_argument("--requests", type=int, default=20, help="requests per strategy per phase")
    ap.add_argument("--phase", action="append", help=f"a link phase, in order (default: {' '.join(DEFAULT_PHASES)})")
    ap.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    args = ap.parse_args()
    phases = [Link.parse(p) for p in (args.phase or DEFAULT_PHASES)]

    rows, verdicts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = build_bundle(root, args.size, args.width, args.edge_cpu, args.worker_threads)
        port = free_port()
        worker = start_worker(bundle, port, root / "worker.log", args=["--threads", str(args.worker_threads)])
        try:
            with contextlib.ExitStack() as stack:
                link = stack.enter_context(LinkProcess(f"127.0.0.1:{port}"))
                # Without shared weights: sharing turns off onnxruntime's NCHWc layout pass (convolutions
                # ~20 % slower) in every runtime that loads more than one session, which all but pinned
                # "local" do; the comparison would be about that, not about the choice of split.
                auto = stack.enter_context(EdgeRuntime(bundle, cloud=link.address, split="auto", threads=1,
                                                       share_weights=False))
                fixed = {
                    s: stack.enter_context(EdgeRuntime(bundle, cloud=link.address, split=s, threads=1, deadline_ms=60_000,
                                                       share_weights=False))
                    for s in auto.policy.candidates
                }
                strategies = {"adaptive": auto, **{f"split:{s}": rt for s, rt in fixed.items()}}
                x = {"x": np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)}
                device = stack.enter_context(CpuLimit(args.edge_cpu))
                for rt in strategies.values():  # warm-up: sessions, connections
                    for _ in range(3):
                        rt.infer(x)
                for phase in phases:
                    link.command(f"bandwidth {phase.bandwidth_bps / 1e6:g}")
                    link.command(f"delay {phase.rtt_ms / 2:g}")
                    _log(f"phase {phase}")
                    times: dict[str, list[float]] = {name: [] for name in strategies}
                    choices = []
                    names = list(strategies)
                    for i in range(args.requests):
                        for name in names[i % len(names):] + names[: i % len(names)]:
                            t = time.perf_counter()
                            strategies[name].infer(x)
                            times[name].append((time.perf_counter() - t) * 1e3)
                        choices.append(auto.last_trace.split)
                    means = {name: statistics.fmean(v) for name, v in times.items()}
                    best = min((n for n in means if n != "adaptive"), key=means.__getitem__)
                    ratio = means["adaptive"] / means[best]
                    verdicts.append(ratio <= 1.10)
                    rows.append([str(phase), best, f"{means[best]:.1f}", f"{means['adaptive']:.1f}", f"{ratio:.2f}",
                                 str(settle_after(choices)),
                                 ", ".join(f"{s} x{n}" for s, n in Counter(choices).most_common()),
                                 ", ".join(f"{n.removeprefix('split:')} {m:.0f}" for n, m in means.items() if n != "adaptive")])
                    _log(f"  best fixed {best} {means[best]:.1f} ms, adaptive {means['adaptive']:.1f} ms ({ratio:.2f}x)")
                method = device.method
        finally:
            worker.terminate()
            worker.wait()

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print(f"Machine: {machine()}. Edge: {args.edge_cpu} CPU ({method}), 1 onnxruntime thread; "
              f"worker: {args.worker_threads} thread(s), its own process; link: a link proxy process on loopback.")
        print(f"Command: `{' '.join(['.venv/bin/python', *sys.argv])}`\n")
        print_table(["link", "best fixed split", "its mean ms", "adaptive mean ms", "adaptive / best",
                     "requests to settle", "adaptive's choices", "every fixed split (mean ms)"], rows)
        print(f"\nAdaptive within 10 % of the best fixed split in {sum(verdicts)} of {len(verdicts)} phases.")
    print(out.getvalue())
    if args.out:
        args.out.write_text(out.getvalue())


if __name__ == "__main__":
    main()
