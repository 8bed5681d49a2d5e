"""Stream throughput against the bottleneck-stage bound, and against sequential calls.

Splits a CNN where the edge and cloud segments take about the same time and
serves the suffix from a worker process behind a link proxy on loopback (one
onnxruntime thread each side). A frame passes through these stages, each
timed on its own before the run:

- edge: the prefix and the encoding of the cut tensors (one thread, in turn),
  timed through the runtime itself: its sessions are what the stream runs
  (weight sharing, the edge's default, turns off some of onnxruntime's layout
  optimisations, so a bare session of the same prefix is faster);
- uplink: the encoded request's bytes at the link's bandwidth;
- worker: decoding the request (timed here) and the suffix's compute time
  the worker reports;
- downlink: the answer's bytes at the link's bandwidth.

The link proxy runs as a process of its own, as a real link would not share
the edge's interpreter.

The link's bandwidth is set so that the uplink takes as long as the edge
stage: the stages are balanced, and the bound is 1 / (slowest stage).
Sequential ``infer`` calls and ``stream`` run interleaved in the same run.

The bound assumes the stages run in parallel, as on a device, a network and a
server. With ``--pin`` the edge (this process) runs on CPU 0 and the worker and
link proxy on CPU 1 (every thread, testbed.device.pin), so the edge does not
share its core with the far side as it otherwise does on a small machine.

    .venv/bin/python benchmarks/stream_bench.py [--frames 150] [--rounds 5] [--pin]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from report import machine

from edge import EdgeRuntime
from partitioner import inspect, split
from splitpoint import codec as codec_mod
from splitpoint import framing, wire
from splitpoint._proto import grpc_service_pb2 as pb
from splitpoint.backends import load_session
from testbed.demo import free_port, start_worker
from testbed.device import pin
from testbed.linkproxy import LinkProcess
from testbed.models import save_demo_cnn


def _median_ms(fn: Callable[[], object], n: int = 20) -> float:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _cpu_s(pid: int) -> float:
    """CPU seconds process ``pid`` has used (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def balanced_bundle(root: Path, size: int, codec: str, only: str | None = None) -> tuple[Path, str, float, int]:
    """The split whose prefix and suffix times are closest (or the split ``only``).

    Returns the bundle, the split id, the worker's decoding time and the
    request's size in bytes.
    """
    model = save_demo_cnn(root / "cnn.onnx", size=size)
    candidates = [c for c in inspect(model).candidates if c.balanced]
    bundle = split(model, root / "bundle", at=[c.names for c in candidates], overwrite=True)
    x = {"image": np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)}
    spec = codec_mod.parse(codec)
    best = None
    for s in bundle.manifest.splits:
        if not s.edge_file or only not in (None, s.id):
            continue
        prefix = load_session(bundle.path(s.edge_file), threads=1)
        suffix = load_session(bundle.path(s.cloud_file), threads=1)
        out = {**x, **prefix.run(x)}
        sent = {n: out[n] for n in s.sent_names}
        tp, ts = _median_ms(lambda: prefix.run(x)), _median_ms(lambda: suffix.run(sent))
        if best is None or abs(tp - ts) < best[0]:
            data = wire.build_request("m", sent, spec, {})[0].to_bytes()
            decode = _median_ms(lambda: wire.read_request(framing.parse_request(data), s.cut))  # noqa: B023
            best = (abs(tp - ts), s.id, decode, len(data))
    if best is None:
        raise SystemExit(f"--split {only}: not a split of the demo CNN; it has {[s.id for s in bundle.manifest.splits]}")
    return bundle.root, *best[1:]  # type: ignore[return-value,index]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=128, help="image size of the CNN")
    ap.add_argument("--in-flight", type=int, default=4)
    ap.add_argument("--codec", default="shuffle-zstd:1")
    ap.add_argument("--delay-ms", type=float, default=5.0, help="one-way delay of the link")
    ap.add_argument("--split", help="measure this split (default: the one whose prefix and suffix times are closest)")
    ap.add_argument("--pin", action="store_true", help="edge on CPU 0, worker and link proxy on CPU 1")
    ap.add_argument("--no-share-weights", dest="share_weights", action="store_false",
                    help="EdgeRuntime(share_weights=False): onnxruntime's layout optimisations on, a faster edge stage")
    args = ap.parse_args()
    if args.pin and not {0, 1} <= os.sched_getaffinity(0):
        raise SystemExit("--pin needs CPUs 0 and 1")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle, split_id, decode_ms, request_bytes = balanced_bundle(root, args.size, args.codec, args.split)
        port = free_port()
        worker = start_worker(bundle, port, root / "worker.log", args=["--threads", "1"])
        link = None
        try:
            link = LinkProcess(f"127.0.0.1:{port}", None, args.delay_ms)
            if args.pin:
                pin(worker.pid, {1})
                pin(link.pid, {1})
                pin(os.getpid(), {0})
            rng = np.random.default_rng(1)
            frames = [{"image": rng.standard_normal((1, 3, args.size, args.size)).astype(np.float32)} for _ in range(args.frames)]
            with EdgeRuntime(bundle, cloud=link.address, split=split_id, threads=1, deadline_ms=10_000,
                             codec=args.codec, share_weights=args.share_weights) as rt:
                # The edge stage as the runtime runs it (its sessions, its codec), on the core it will have.
                segments = rt._segments[split_id]
                edge_ms = _median_ms(lambda: rt._encode(rt._edge_half(frames[0], segments))[0].to_bytes())
                bandwidth = request_bytes * 8 / (edge_ms / 1e3)  # uplink stage == edge stage
                link.command(f"bandwidth {bandwidth / 1e6}")
                worker_ms = []
                for x in frames[:30]:
                    rt.infer(x)
                    worker_ms.append(rt.last_trace.cloud_ms)
                answer_bytes = len(wire.build_response(pb.ModelInferRequest(), rt.infer(frames[0])).to_bytes())
                stages = {
                    "edge (prefix + encode)": edge_ms,
                    "uplink": request_bytes * 8 / bandwidth * 1e3,
                    "worker (decode + suffix)": decode_ms + statistics.median(worker_ms),
                    "downlink": answer_bytes * 8 / bandwidth * 1e3,
                }
                seq, pipe, cpu = [], [], []
                for _ in range(args.rounds):  # interleaved: the machine is shared and noisy
                    t = time.perf_counter()
                    for x in frames:
                        rt.infer(x)
                    seq.append(len(frames) / (time.perf_counter() - t))
                    t = time.perf_counter()
                    c0 = _cpu_s(os.getpid()), _cpu_s(worker.pid), _cpu_s(link.pid)
                    n = sum(1 for _ in rt.stream(frames, max_in_flight=args.in_flight))
                    pipe.append(n / (time.perf_counter() - t))
                    cpu.append([(_cpu_s(pid) - c) * 1e3 / n for pid, c in zip((os.getpid(), worker.pid, link.pid), c0)])
                fallbacks = rt.counters.fallbacks
        finally:
            if link is not None:
                link.close()
            worker.terminate()
            worker.wait()

    bound = 1e3 / max(stages.values())
    print(machine() + (", edge pinned to CPU 0, worker and link proxy to CPU 1" if args.pin else ", nothing pinned")
          + f", share_weights={args.share_weights}")
    print(f"split {split_id}, codec {args.codec}, request {request_bytes / 2**20:.2f} MiB, "
          f"link {bandwidth / 1e6:.0f} Mbit/s + {args.delay_ms:g} ms one way")
    for name, ms in stages.items():
        print(f"  stage {name}: {ms:.2f} ms")
    print(f"bound 1/slowest stage: {bound:.1f} frames/s")
    seq_fps, pipe_fps = statistics.median(seq), statistics.median(pipe)
    print(f"sequential infer: {seq_fps:.1f} frames/s (median of {args.rounds})")
    print(f"stream, {args.in_flight} in flight: {pipe_fps:.1f} frames/s "
          f"= {pipe_fps / bound:.0%} of the bound, {pipe_fps / seq_fps:.2f}x sequential")
    print(f"rounds: sequential {[round(v, 1) for v in seq]}, stream {[round(v, 1) for v in pipe]}")
    print("CPU ms per frame while streaming (edge, worker, link proxy): "
          + ", ".join(f"{statistics.median(c):.2f}" for c in zip(*cpu)))
    print(f"fallbacks during the run: {fallbacks}")


if __name__ == "__main__":
    main()
