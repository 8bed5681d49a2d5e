"""How well do profiles predict split latency? Predicted vs measured segment times, per candidate split.

For each model (ResNet-like and MobileNetV2-like at 224x224, a 4-layer transformer
encoder with embeddings and an attention mask at 128 tokens, all from
testbed/zoo.py): write a bundle with (up to ``--max-splits``) candidate splits
and run the segments for real: the edge segment in a 1-thread session, the
cloud segment in a 2-thread one, with the options the profiles use (all
optimizations; idle threads do not spin, or the dozens of 2-thread cloud
sessions held here would spin on the cores the edge runs on). Each round
profiles this machine as the edge (1 thread) and the cloud (2 threads) with
``partitioner.profile``, then runs every split once, so profiles and
measurements see the same spells of load on this shared machine; the
prediction of a split's edge segment (prefix, edge profile) and cloud segment
(suffix, cloud profile) uses the per-node medians of the rounds' profiles, and
each measured figure is the median of the rounds. Predictions are made twice:
from the node times alone, and with the profiles' boundary term (ms per MB
crossing the cut, fitted by each profile on a few segments of its own:
``partitioner.profile_boundary``), which is what the cost model uses.

The error reported is the median over splits of |predicted - measured| / measured,
for the edge segment, the cloud segment and their sum (the compute part of the
end-to-end latency; the transfer part is bytes / bandwidth + RTT, arithmetic on
measured sizes, and is left out so as not to flatter the figure).

    python benchmarks/prediction_accuracy.py [--rounds 15] [--runs 3] [--max-splits 40] [--out benchmarks/prediction.md]

The report is the tables; benchmarks/prediction.md adds a hand-written reading of them.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from partitioner import profile, split
from partitioner.cuts import candidate_cuts
from partitioner.graph import GraphView
from partitioner.onnxio import load_model
from partitioner.ort_trace import session_options
from partitioner.profile import Profile, machine
from partitioner.profile_boundary import Boundary
from partitioner.profile_timing import gc_paused

EDGE_THREADS, CLOUD_THREADS = 1, 2
LOAD: list[float] = []  # the 1-minute load average at the start of each round: how shared the machine was


def _export(name: str, path: Path) -> None:
    from testbed import zoo

    if name == "resnet":
        zoo.export_onnx(zoo.resnet_like(width=32), path, dynamo=False, input_shape=(1, 3, 224, 224))
    elif name == "mobilenet":
        zoo.export_onnx(zoo.mobilenet_v2_like(), path, dynamo=True, input_shape=(1, 3, 224, 224))
    else:
        zoo.export_transformer_onnx(zoo.transformer_encoder_like(), path, dynamo=True, seq_len=128)


def export(name: str, workdir: Path) -> Path:
    """Export in a child process: torch's thread pools left in this one would slow every run measured here."""
    path = workdir / f"{name}.onnx"
    child = multiprocessing.get_context("spawn").Process(target=_export, args=(name, path))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"exporting {name} failed")
    return path


def spread(items: list, count: int) -> list:
    """At most ``count`` items, evenly spaced, first and last kept."""
    if len(items) <= count:
        return items
    return [items[round(k * (len(items) - 1) / (count - 1))] for k in range(count)]


class Segment:
    """A segment in an onnxruntime session set up as the profiles were (``ort_trace.session_options``)."""

    def __init__(self, path: Path, threads: int):
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def timed(self, tensors: dict) -> tuple[float, dict]:
        feed = {name: tensors[name] for name in self.inputs}
        start = time.perf_counter()
        out = self.session.run(self.outputs, feed)
        return (time.perf_counter() - start) * 1e3, dict(zip(self.outputs, out))


def median_profile(profiles: list[Profile]) -> Profile:
    """One profile from several taken over the run: per-node, end-to-end and overhead medians."""
    nodes = {i: replace(n, ms=statistics.median(p.nodes[i].ms for p in profiles)) for i, n in profiles[0].nodes.items()}
    boundary = Boundary(statistics.median(p.boundary.out_ms_per_mb for p in profiles),
                        statistics.median(p.boundary.in_ms_per_mb for p in profiles))
    return replace(profiles[0], nodes=nodes, runs=sum(p.runs for p in profiles),
                   end_to_end_ms=statistics.median(p.end_to_end_ms for p in profiles),
                   call_overhead_ms=statistics.median(p.call_overhead_ms for p in profiles), boundary=boundary)


def evaluate(name: str, workdir: Path, rounds: int, runs: int, max_splits: int) -> dict:
    path = export(name, workdir)
    view = GraphView.of(load_model(path).graph)
    cuts = spread(candidate_cuts(view), max_splits)
    print(f"{name}: writing {len(cuts)} candidate splits", file=sys.stderr)
    bundle = split(path, workdir / f"{name}.bundle", at=[list(c.sent) for c in cuts], golden=1, overwrite=True)
    inputs = bundle.golden_cases()[0][0]
    rows = []
    for s in [s for s in bundle.manifest.splits if s.edge_file]:
        prefix = view.ancestors(s.sent_names + list(s.edge_outputs))
        crossing = sum(t.bytes or 0 for t in s.cut if t.name in view.producer)
        rows.append({"id": s.id, "edge_nodes": len(prefix), "prefix": prefix, "suffix": set(view.order) - prefix,
                     "mb": crossing / 1e6,
                     "edge_ms": [], "cloud_ms": [],
                     "edge": Segment(bundle.path(s.edge_file), EDGE_THREADS),
                     "cloud": Segment(bundle.path(s.cloud_file), CLOUD_THREADS)})
    edge_profiles: list[Profile] = []
    cloud_profiles: list[Profile] = []
    for r in range(rounds + 2):  # two warm-up rounds; each round profiles both sides, then runs every split once
        print(f"{name}: round {r + 1}/{rounds + 2}", file=sys.stderr)
        LOAD.append(os.getloadavg()[0])
        edge_p = profile(path, threads=EDGE_THREADS, runs=runs, warmup=1)
        cloud_p = profile(path, threads=CLOUD_THREADS, runs=runs, warmup=1)
        with gc_paused():  # as the profiles time their runs
            for row in rows:
                e_ms, sent = row["edge"].timed(inputs)
                c_ms, _ = row["cloud"].timed({**inputs, **sent})
                if r >= 2:
                    row["edge_ms"].append(e_ms)
                    row["cloud_ms"].append(c_ms)
        if r >= 2:
            edge_profiles.append(edge_p)
            cloud_profiles.append(cloud_p)
    edge_p, cloud_p = median_profile(edge_profiles), median_profile(cloud_profiles)
    for row in rows:
        prefix, suffix, crossing = row.pop("prefix"), row.pop("suffix"), round(row["mb"] * 1e6)
        row["nodes_edge"], row["nodes_cloud"] = edge_p.segment_ms(prefix), cloud_p.segment_ms(suffix)
        row["pred_edge"] = edge_p.prefix_ms(prefix, crossing)
        row["pred_cloud"] = cloud_p.suffix_ms(suffix, crossing)
        row["meas_edge"] = statistics.median(row.pop("edge_ms"))
        row["meas_cloud"] = statistics.median(row.pop("cloud_ms"))
        del row["edge"], row["cloud"]
    return {"name": name, "edge": edge_p, "cloud": cloud_p, "rows": rows, "nodes": len(view.order)}


def ape(pred: float, meas: float) -> float:
    return abs(pred - meas) / meas


def report(results: list[dict], command: str) -> str:
    m = machine()
    lines = [
        "# Prediction accuracy: profiles vs segments run for real",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['platform']}, Python {m['python']}, "
        f"onnxruntime {ort.__version__}, numpy {np.__version__}. Edge: {EDGE_THREADS} thread; cloud: "
        f"{CLOUD_THREADS} threads (same machine, shared with other work: 1-minute load average {min(LOAD):.1f} to "
        f"{max(LOAD):.1f} over the rounds, median {statistics.median(LOAD):.1f}).",
        "",
        "MdAPE = median over the candidate splits of |predicted - measured| / measured (segments: medians of the "
        "interleaved rounds). *sum* is edge + cloud compute, the part of the end-to-end latency the profiles predict. "
        "Predictions with the boundary term (what the cost model uses); *nodes only* without it.",
        "",
        "| model | nodes | splits | full model edge ms (profile) | boundary out / in ms per MB (edge; cloud) "
        "| MdAPE edge | MdAPE cloud | MdAPE sum | worst sum | nodes only: MdAPE edge / cloud / sum |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for res in results:
        rows = res["rows"]
        e = [ape(r["pred_edge"], r["meas_edge"]) for r in rows]
        c = [ape(r["pred_cloud"], r["meas_cloud"]) for r in rows]
        s = [ape(r["pred_edge"] + r["pred_cloud"], r["meas_edge"] + r["meas_cloud"]) for r in rows]
        ne = [ape(r["nodes_edge"], r["meas_edge"]) for r in rows]
        nc = [ape(r["nodes_cloud"], r["meas_cloud"]) for r in rows]
        ns = [ape(r["nodes_edge"] + r["nodes_cloud"], r["meas_edge"] + r["meas_cloud"]) for r in rows]
        eb, cb = res["edge"].boundary, res["cloud"].boundary
        lines.append(f"| {res['name']} | {res['nodes']} | {len(rows)} | {res['edge'].end_to_end_ms:.2f} | "
                     f"{eb.out_ms_per_mb:.3f} / {eb.in_ms_per_mb:.3f}; {cb.out_ms_per_mb:.3f} / {cb.in_ms_per_mb:.3f} | "
                     f"{statistics.median(e):.1%} | {statistics.median(c):.1%} | {statistics.median(s):.1%} | "
                     f"{max(s):.1%} | {statistics.median(ne):.1%} / {statistics.median(nc):.1%} / "
                     f"{statistics.median(ns):.1%} |")
    for res in results:
        lines += ["", f"## {res['name']}", "",
                  f"edge profile: {res['edge'].summary()}", "",
                  f"cloud profile: {res['cloud'].summary()}", "",
                  "| split | edge nodes | MB crossing | edge pred | edge meas | cloud pred | cloud meas | sum error "
                  "| sum error, nodes only |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in res["rows"]:
            measured = r["meas_edge"] + r["meas_cloud"]
            err = (r["pred_edge"] + r["pred_cloud"]) / measured - 1
            nodes_err = (r["nodes_edge"] + r["nodes_cloud"]) / measured - 1
            lines.append(f"| {r['id'][:40]} | {r['edge_nodes']} | {r['mb']:.2f} | {r['pred_edge']:.3f} | "
                         f"{r['meas_edge']:.3f} | {r['pred_cloud']:.3f} | {r['meas_cloud']:.3f} | {err:+.1%} | "
                         f"{nodes_err:+.1%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet,mobilenet,transformer")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds over all splits (default: 15)")
    p.add_argument("--runs", type=int, default=3, help="profiled runs per side and round (default: 3)")
    p.add_argument("--max-splits", type=int, default=40, help="candidate splits per model, evenly spread (default: 40)")
    p.add_argument("--out", help="write the markdown report here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="splitpoint-prediction-") as tmp:
        results = [evaluate(name, Path(tmp), args.rounds, args.runs, args.max_splits) for name in args.models.split(",")]
    command = "python benchmarks/prediction_accuracy.py " + " ".join(sys.argv[1:])
    text = report(results, command.strip())
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    print(platform.python_version(), file=sys.stderr)


if __name__ == "__main__":
    main()
