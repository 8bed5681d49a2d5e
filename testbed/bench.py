"""``splitpoint bench``: split vs all-local vs all-cloud vs the adaptive runtime, over emulated links.

One run measures, per link, every strategy a bundle offers: ``local`` (the
whole model on the edge), ``cloud`` (the raw inputs sent), each candidate
split ``split:<id>`` and ``adaptive`` (``split="auto"``, choosing per request
from the link it measures). The oracle is the best fixed strategy in
hindsight: the lowest measured p50 among local, cloud and the splits; the
adaptive runtime is judged against it, so it is not a candidate itself.

How it is set up, and why:

- the worker is a separate ``splitpoint serve`` process, started before the
  edge is slowed, so only the edge runs on a fraction of a core;
- the edge is this process, inside ``testbed.device.CpuLimit`` while it
  measures (the method used is recorded);
- the links are ``testbed.linkproxy.LinkProcess`` proxies, processes of
  their own, so shaping the traffic does not spend the edge's CPU quota;
  each strategy gets its own proxy with the same shape, so its bytes are
  counted exactly and the adaptive runtime's probes never queue behind
  another strategy's request;
- strategies are interleaved request by request, in a new random order each
  round: a busy spell of the shared machine hits them alike (the load
  average before and after is recorded, to say how busy it was).

A link ``B/RTT`` is a bandwidth per direction and a round-trip time: the proxy
delays each direction by RTT/2. Latency is the wall time of ``infer()``;
bytes are what crossed the proxy both ways (gRPC framing and health probes
included) per request; edge CPU is this process's CPU time per request;
worker ms is the median compute time the worker reported.
"""

from __future__ import annotations

import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort

from edge import EdgeRuntime
from edge.runtime import AUTO
from splitpoint import __version__
from splitpoint import codec as codec_mod
from splitpoint.bundle import CLOUD, LOCAL, Bundle
from splitpoint.cost import Link
from splitpoint.errors import SplitpointError
from testbed.demo import free_port, start_worker, stop_worker
from testbed.device import CpuLimit
from testbed.linkproxy import LinkProcess

ADAPTIVE = "adaptive"
DEADLINE_MS = 600_000.0  # no fallback on the slowest link: a fallback would measure the edge, not the strategy

Log = Callable[[str], None]


def parse_links(texts: Sequence[str]) -> list[Link]:
    """``--link`` values as links; a bad one is a SplitpointError naming the flag."""
    links = []
    for text in texts:
        try:
            links.append(Link.parse(text))
        except SplitpointError as e:
            raise SplitpointError(f"--link: {e}") from None
    return links


def strategies(bundle: Bundle) -> dict[str, str]:
    """Strategy name -> the ``split`` argument of its EdgeRuntime; ``adaptive`` only when splits carry costs."""
    m = bundle.manifest
    names = {LOCAL: LOCAL, CLOUD: CLOUD}
    names |= {f"split:{s.id}": s.id for s in m.splits if s.id not in (LOCAL, CLOUD)}
    if any(s.predicted for s in m.splits):
        names[ADAPTIVE] = AUTO
    return names


@dataclass
class Measured:
    """One strategy on one link: per-request latencies, CPU, and what it did."""

    latencies_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    worker_ms: list[float] = field(default_factory=list)  # the compute time the worker reported, when it answered
    bytes: int = 0
    fallbacks: int = 0
    splits_taken: Counter = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms)
        n = len(lat)
        return {
            "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p95_ms": round(float(np.percentile(lat, 95)), 3),
            "mean_ms": round(float(lat.mean()), 3),
            "bytes": round(self.bytes / n),
            "edge_cpu_ms": round(float(np.mean(self.cpu_ms)), 3),
            "worker_ms_p50": round(float(np.median(self.worker_ms)), 3) if self.worker_ms else None,
            "requests": n,
            "fallbacks": self.fallbacks,
            "splits_taken": dict(self.splits_taken),
        }


# -- measuring --------------------------------------------------------------------


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _one(rt: EdgeRuntime, inputs: dict[str, np.ndarray], m: Measured | None) -> None:
    """One request; recorded in ``m`` unless it is a warm-up."""
    cpu, start = _cpu_s(), time.perf_counter()
    rt.infer(inputs)
    wall, cpu = (time.perf_counter() - start) * 1e3, (_cpu_s() - cpu) * 1e3
    if m is not None:
        trace = rt.last_trace
        m.latencies_ms.append(wall)
        m.cpu_ms.append(cpu)
        m.fallbacks += trace.path == "fallback"
        if trace.path == "cloud":
            m.worker_ms.append(trace.cloud_ms)
        m.splits_taken[trace.split] += 1


def bench_link(
    bundle: Bundle,
    link: Link,
    names: dict[str, str],
    worker: str,
    edge_cpu: float | None,
    requests: int,
    warmup: int,
    codec: str | None,
    threads: int,
    share_weights: bool,
    seed: int,
    log: Log,
) -> tuple[dict[str, Measured], str]:
    """Every strategy in ``names`` over ``link``, interleaved request by request; also how the edge was slowed."""
    with ExitStack() as stack:
        links = {name: stack.enter_context(LinkProcess(worker, link.bandwidth_bps, link.rtt_ms / 2))
                 for name, split in names.items() if split != LOCAL}
        runtimes = {
            name: stack.enter_context(EdgeRuntime(bundle.root, cloud=links[name].address if name in links else None,
                                                  split=split, deadline_ms=DEADLINE_MS, codec=codec, threads=threads,
                                                  share_weights=share_weights))
            for name, split in names.items()
        }
        cases = [inputs for inputs, _ in bundle.golden_cases()]
        rng = random.Random(seed)
        measured = {name: Measured() for name in names}
        order = list(names)
        limit = CpuLimit(edge_cpu) if edge_cpu is not None else nullcontext()
        with limit:
            for k in range(warmup):
                for name in order:
                    _one(runtimes[name], cases[k % len(cases)], None)
            before = {name: sum(p.bytes()) for name, p in links.items()}
            for k in range(requests):
                rng.shuffle(order)
                for name in order:
                    _one(runtimes[name], cases[k % len(cases)], measured[name])
                if (k + 1) % max(requests // 5, 1) == 0 or k + 1 == requests:
                    log(f"  {_link_text(link)}: round {k + 1}/{requests}")
        for name, p in links.items():
            measured[name].bytes = sum(p.bytes()) - before[name]
        return measured, limit.method if isinstance(limit, CpuLimit) else "none (the edge runs at full speed)"


def run_bench(
    bundle_dir: str | Path,
    links: Sequence[Link],
    edge_cpu: float | None = 0.25,
    requests: int = 30,
    warmup: int = 3,
    codec: str | None = None,
    threads: int = 1,
    worker_threads: int | None = None,
    share_weights: bool = False,
    command: str = "",
    seed: int = 0,
    log: Log = lambda _: None,
) -> dict[str, Any]:
    """Measure every strategy of the bundle over each link; the result as the JSON ``splitpoint bench`` writes.

    ``share_weights`` is EdgeRuntime's: off by default, so that every strategy runs with onnxruntime's full
    optimisations (sharing turns the NCHWc layout pass off, which slows convolutions; see
    benchmarks/edge_footprint.md) and only the split differs between them.
    """
    if not links:
        raise SplitpointError("--link: give at least one link, e.g. --link 20mbit/20ms")
    if requests < 1:
        raise SplitpointError(f"--requests {requests}: at least one request per strategy is needed")
    if warmup < 0:
        raise SplitpointError(f"--warmup {warmup}: must not be negative")
    if edge_cpu is not None and not edge_cpu > 0:
        raise SplitpointError(f"--edge-cpu {edge_cpu:g}: must be a positive number of cores, such as 0.25")
    if threads < 1 or (worker_threads is not None and worker_threads < 1):
        flag, n = ("--threads", threads) if threads < 1 else ("--worker-threads", worker_threads)
        raise SplitpointError(f"{flag} {n}: at least one thread is needed")
    try:
        codec_mod.parse(codec or "raw")  # a bad --codec fails before the worker starts
    except SplitpointError as e:
        raise SplitpointError(f"--codec: {e}") from None
    bundle = Bundle(bundle_dir)
    names = strategies(bundle)
    if ADAPTIVE not in names:
        log(f"note: bundle {bundle.name!r} has no predicted costs, so no adaptive runtime "
            "(make it with `splitpoint split MODEL -o BUNDLE --candidates auto`)")
    load_before = os.getloadavg()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="splitpoint-bench-") as tmp:
        log_path = Path(tmp) / "worker.log"
        args = [] if worker_threads is None else ["--threads", str(worker_threads)]
        log(f"starting the worker: splitpoint serve {bundle.root} --port {port} {' '.join(args)}".rstrip())
        worker = start_worker(bundle.root, port, log_path, args=args)
        try:
            results = []
            for i, link in enumerate(links):
                log(f"link {_link_text(link)}: {len(names)} strategies ({', '.join(names)}), "
                    f"{warmup} warm-up + {requests} requests each")
                measured, method = bench_link(bundle, link, names, f"127.0.0.1:{port}", edge_cpu, requests, warmup,
                                              codec, threads, share_weights, seed + i, log)
                results.append(_link_result(link, measured))
        finally:
            stop_worker(worker)
    machine = _machine(method, edge_cpu, threads, worker_threads, codec or bundle.manifest.codec, share_weights, command)
    machine["load_average"] = {"before": load_before[0], "after": os.getloadavg()[0]}  # 1-minute: how shared it was
    return {"bundle": bundle.name, "links": results, "machine": machine}


def _link_result(link: Link, measured: dict[str, Measured]) -> dict[str, Any]:
    stats = {name: m.to_json() for name, m in measured.items()}
    fixed = {name: s["p50_ms"] for name, s in stats.items() if name != ADAPTIVE}
    oracle = min(fixed, key=fixed.__getitem__)
    return {"link": _link_text(link), "strategies": stats, "oracle": oracle}


def _link_text(link: Link) -> str:
    """``2mbit/50ms`` as the user would write it (Link's own str always says mbit)."""
    bw = link.bandwidth_bps
    rate = f"{bw / 1e9:g}gbit" if bw >= 1e9 else f"{bw / 1e6:g}mbit" if bw >= 1e6 else f"{bw / 1e3:g}kbit"
    return f"{rate}/{link.rtt_ms:g}ms"


def _machine(method: str, edge_cpu: float | None, threads: int, worker_threads: int | None, codec: str,
             share_weights: bool, command: str) -> dict[str, Any]:
    from partitioner.profile import machine

    info = machine()
    return {
        "cpu": info["processor"],
        "cores": info["cpu_count"],
        "platform": info["platform"],
        "python": info["python"],
        "onnxruntime": ort.__version__,
        "grpcio": grpc.__version__,
        "numpy": np.__version__,
        "splitpoint": __version__,
        "edge_emulation": method,
        "edge_cpu": edge_cpu,
        "edge_threads": threads,
        "worker_threads": worker_threads or "onnxruntime default (one per core)",
        "codec": codec,
        "edge_share_weights": share_weights,
        "command": command or " ".join(sys.argv),
        "source": _source_version(),
        "implementation": platform.python_implementation(),
    }


def _source_version() -> str | None:
    """The git commit of the splitpoint source, and whether it had uncommitted changes (None outside a checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head} + uncommitted changes" if dirty else head


# -- reporting ----------------------------------------------------------------------


def speedups(entry: dict[str, Any]) -> dict[str, dict[str, float]]:
    """p50 of local and of cloud over the p50 of the oracle (and of adaptive): >1 is faster."""
    s = entry["strategies"]
    out = {}
    for who in [entry["oracle"], *([ADAPTIVE] if ADAPTIVE in s else [])]:
        p50 = s[who]["p50_ms"]
        out[who] = {"over_local": s[LOCAL]["p50_ms"] / p50, "over_cloud": s[CLOUD]["p50_ms"] / p50,
                    "of_oracle": p50 / s[entry["oracle"]]["p50_ms"]}
    return out


def format_report(result: dict[str, Any]) -> str:
    header = ["strategy", "p50 ms", "p95 ms", "KiB/req", "edge CPU ms", "worker ms", "fallbacks", ""]
    lines = []
    for entry in result["links"]:
        rows = []
        for name, s in entry["strategies"].items():
            mark = "oracle" if name == entry["oracle"] else ""
            if name == ADAPTIVE:
                mark = "took " + ", ".join(f"{k} x{v}" for k, v in s["splits_taken"].items())
            rows.append([name, f"{s['p50_ms']:.1f}", f"{s['p95_ms']:.1f}", f"{s['bytes'] / 1024:.1f}",
                         f"{s['edge_cpu_ms']:.1f}", "-" if s["worker_ms_p50"] is None else f"{s['worker_ms_p50']:.1f}",
                         str(s["fallbacks"]), mark])
        lines += [f"link {entry['link']}", *_table(header, rows)]
        for who, sp in speedups(entry).items():
            lines.append(f"  {who}: {sp['over_local']:.2f}x over all-local, {sp['over_cloud']:.2f}x over all-cloud"
                         + ("" if who == entry["oracle"] else f", p50 {sp['of_oracle']:.3f} of the oracle's"))
        lines.append("")
    m = result["machine"]
    lines.append(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, onnxruntime {m['onnxruntime']}; "
                 f"edge: {m['edge_emulation']}, {m['edge_threads']} thread(s)")
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Aligned text columns: names left, numbers right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    last = len(header) - 1
    return ["  ".join(c.rjust(w) if 0 < i < last else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in [header, *rows]]


def _label(name: str, width: int = 26) -> str:
    """A strategy's name short enough for an axis: split ids lose their prefix and the ends they share."""
    short = name.removeprefix("split:").removesuffix("_output_0")
    return short if len(short) <= width else "…" + short[-(width - 1):]


_COLORS = {LOCAL: "#8c8c8c", CLOUD: "#4c72b0", ADAPTIVE: "#55a868"}


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Bars of p50 latency per strategy, one panel per link, p95 as a whisker, the oracle outlined."""
    try:
        import matplotlib
    except ImportError:
        raise SplitpointError("--plot needs matplotlib: pip install 'splitpoint[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = result["links"]
    names = list(entries[0]["strategies"])
    fig, axes = plt.subplots(1, len(entries), figsize=(max(6.0, 0.6 * len(names) + 2.5) * len(entries) / 1.6, 5.0),
                             layout="constrained", squeeze=False)
    for ax, entry in zip(axes[0], entries):
        s = entry["strategies"]
        p50 = [s[n]["p50_ms"] for n in names]
        p95 = [s[n]["p95_ms"] for n in names]
        colors = [_COLORS.get(n, "#dd8452") for n in names]
        bars = ax.bar(range(len(names)), p50, color=colors, yerr=[[0] * len(names), np.subtract(p95, p50)],
                      capsize=3, ecolor="#333333")
        bars[names.index(entry["oracle"])].set(edgecolor="black", linewidth=2.0, hatch="//")
        ax.set_title(f"{entry['link']} (oracle: {_label(entry['oracle'])})", fontsize=9)
        ax.set_xticks(range(len(names)), [_label(n) for n in names], rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("latency ms (bar p50, whisker p95)")
    m = result["machine"]
    fig.suptitle(f"{result['bundle']}: edge {m['edge_emulation']}, {m['edge_threads']} thread(s)", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
