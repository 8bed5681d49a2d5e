"""The operator's picture of a plan: where the time goes per split and link, and which split wins when.

Top row, one panel per link: stacked bars of edge compute, transfer and cloud
compute for each split worth showing (the best one marked). Bottom: the best
split's predicted latency against bandwidth (0.1 to 1000 Mbit/s, log scale)
at the sweep's RTT, shaded by which split wins, over each split's own curve. matplotlib (the ``plot``
extra) is imported here only, with the Agg backend: no display is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from partitioner.errors import PartitionError
from partitioner.plan import Plan
from splitpoint.cost import Link

_PARTS = (("edge compute", "#4c72b0"), ("transfer", "#dd8452"), ("cloud compute", "#55a868"))
_LABEL = 22


def plot_plan(plan: Plan, path: str | Path) -> Path:
    """Draw ``plan`` to a PNG at ``path``."""
    try:
        import matplotlib
    except ImportError:
        raise PartitionError("--plot needs matplotlib: pip install 'splitpoint[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    splits = plan.splits
    labels = [s.id if len(s.id) <= _LABEL else s.id[: _LABEL - 2] + ".." for s in splits]
    n = len(plan.links)
    fig = plt.figure(figsize=(max(10.0, 4.2 * n), 9.0), layout="constrained")
    grid = fig.add_gridspec(2, n, height_ratios=[1.2, 1.0])
    for k, lp in enumerate(plan.links):
        ax = fig.add_subplot(grid[0, k])
        parts = np.array([[getattr(s.cost.breakdown(lp.link), f) for f in ("edge_ms", "transfer_ms", "cloud_ms")]
                          for s in splits])
        bottom = np.zeros(len(splits))
        for j, (name, colour) in enumerate(_PARTS):
            ax.bar(range(len(splits)), parts[:, j], bottom=bottom, color=colour, label=name if k == 0 else None)
            bottom += parts[:, j]
        best = next(i for i, s in enumerate(splits) if s.prefix == lp.best.prefix)
        ax.bar([best], [bottom[best]], fill=False, edgecolor="black", linewidth=2.0)
        ax.annotate("best", (best, bottom[best]), ha="center", va="bottom", fontsize=8)
        ax.set_title(f"link {lp.link}")
        ax.set_ylabel("predicted latency (ms)")
        ax.set_xticks(range(len(splits)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_yscale("log" if bottom.max() > 50 * max(bottom.min(), 1e-3) else "linear")
        if k == 0:
            ax.legend(fontsize=7)

    ax = fig.add_subplot(grid[1, :])
    colours = matplotlib.colormaps["tab20"]
    ids = list(dict.fromkeys([*(s.id for s in splits), *(r.choice.id for r in plan.sweep)]))
    everywhere = np.geomspace(plan.sweep[0].low_bps, plan.sweep[-1].high_bps, 200)
    for s in splits:  # every split's own curve, thin
        ms = [s.cost.latency_ms(Link(b, plan.sweep_rtt_ms)) for b in everywhere]
        ax.plot(everywhere / 1e6, ms, color=colours(ids.index(s.id) % 20), linewidth=0.8, linestyle="--")
    best: list[float] = []
    for r in plan.sweep:  # the winner's, thick, over the region where it wins
        colour = colours(ids.index(r.choice.id) % 20)
        bw = np.geomspace(r.low_bps, r.high_bps, 64)
        ms = [r.choice.cost.latency_ms(Link(b, plan.sweep_rtt_ms)) for b in bw]
        ax.axvspan(r.low_bps / 1e6, r.high_bps / 1e6, color=colour, alpha=0.25, label=r.choice.id)
        ax.plot(bw / 1e6, ms, color="black", linewidth=2.0)
        best += ms
    ax.set_ylim(min(best) / 1.5, max(best) * 4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(plan.sweep[0].low_bps / 1e6, plan.sweep[-1].high_bps / 1e6)
    ax.set_xlabel("bandwidth (Mbit/s)")
    ax.set_ylabel("best split's predicted latency (ms)")
    ax.set_title(f"best split by bandwidth, RTT {plan.sweep_rtt_ms:g} ms, objective {plan.objective.name}")
    ax.legend(loc="upper right", fontsize=7, title="split that wins (dashed: each split)")
    fig.suptitle(f"{plan.model.name}: codec {plan.codec}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
