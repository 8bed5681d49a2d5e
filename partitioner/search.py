"""The best split for a link: the optimum over every valid cut of the DAG, by a minimum s-t cut.

DADS-style construction (Hu et al., INFOCOM 2019), with networkx's max-flow:

- each compute node v is on the edge (source side) or the cloud (sink side):
  s -> v costs v on the cloud, v -> t costs v on the edge (plus, on the cloud
  side, the response bytes of the graph outputs v computes);
- a prefix is closed under predecessors (data crosses once, edge to cloud):
  v -> u is infinite for every graph edge u -> v;
- each tensor that can cross gets an auxiliary node x: producer -> x costs
  sending it (encode, bytes on the wire, decode, the segment boundary on
  both sides: ``CostModel.tensor_cost``) and x -> every reader is
  infinite, so a tensor is paid once however many readers are on the cloud;
  graph inputs hang off s (they start on the edge);
- what any non-local split pays whatever the cut (the RTT, the fixed cost of
  two calls) is added after; ``local`` (no call at all) and ``cloud`` (no edge
  call) are scored on their own and compared.

Capacities come from the objective scoring each part as a ``SplitCost`` on
the link, so the cut value and ``Objective.score`` of the resulting split agree
by construction (up to the integer rounding max-flow needs: 1e-6 of a unit).

Constraints: a privacy floor (``min_edge_ops``: the first N compute nodes in
topological order stay on the edge, an infinite s -> v; ``no_raw_inputs``:
sending a graph input is infinite) is part of the cut. An edge memory ceiling
is not additive (peak memory), nor is a check run on the whole split
(``refusal``: agreement on calibration inputs through a lossy codec), so a
split that breaks them is dropped and the best of the splits that pass (the
topological-sweep candidates, local and cloud, checked cheapest first) is
taken instead, with a note.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx

from partitioner.costmodel import Choice, CostModel
from partitioner.cuts import candidate_cuts
from partitioner.errors import PartitionError
from partitioner.objectives import Objective, latency
from splitpoint.bundle import LOCAL
from splitpoint.cost import Link, SplitCost

_RESOLUTION = 1e6  # integer capacity units per objective unit: max-flow on floats is not exact
_S, _T = "s", "t"
MIN_BANDWIDTH_BPS = 0.1e6
MAX_BANDWIDTH_BPS = 1000e6


@dataclass(frozen=True)
class Constraints:
    """A privacy floor (``min_edge_ops``, ``no_raw_inputs``), an edge memory ceiling in MB, and a check of whole splits.

    ``refusal`` says why a split is not offered, or None: ``plan`` sets it from
    calibration inputs (``partitioner.calibration``); ``local`` is never asked.
    """

    min_edge_ops: int = 0
    no_raw_inputs: bool = False
    edge_memory_mb: float | None = None
    refusal: Callable[[Choice], str | None] | None = None

    def __post_init__(self) -> None:
        if self.min_edge_ops < 0:
            raise PartitionError(f"--min-edge-ops {self.min_edge_ops}: must not be negative")
        if self.edge_memory_mb is not None and not self.edge_memory_mb > 0:
            raise PartitionError(f"--edge-memory-mb {self.edge_memory_mb:g}: must be positive")

    @property
    def private(self) -> bool:
        return self.min_edge_ops > 0 or self.no_raw_inputs

    def violation(self, model: CostModel, choice: Choice, measured: bool = True) -> str | None:
        """Why ``choice`` breaks a constraint, or None; the memory ceiling and ``refusal`` (not additive, so
        outside the min-cut) only if ``measured``."""
        view = model.source.view
        if self.private and choice.id != "local":
            if not set(view.order[: self.min_edge_ops]) <= choice.prefix:
                return f"--min-edge-ops {self.min_edge_ops}: fewer nodes on the edge"
            if self.no_raw_inputs and any(t in view.inputs for t in choice.sent):
                return "--no-raw-inputs: sends a graph input"
        if not measured:
            return None
        if self.edge_memory_mb is not None and choice.edge_mb > self.edge_memory_mb:
            return f"--edge-memory-mb {self.edge_memory_mb:g}: needs {choice.edge_mb:.1f} MB on the edge"
        if self.refusal is not None and choice.id != LOCAL:
            return self.refusal(choice)
        return None


@dataclass
class Result:
    """The best split for one link, the trivial splits it was compared with, and notes on how it was found."""

    best: Choice
    local: Choice
    cloud: Choice | None  # None when the codec cannot send a graph input
    notes: list[str] = field(default_factory=list)


def min_cut_prefix(model: CostModel, link: Link, objective: Objective, constraints: Constraints) -> frozenset[int]:
    """The prefix minimising ``objective`` among the splits that make a call.

    Every node (no real cut beats paying for a call) and no node (as good as
    ``cloud``) are possible answers; callers compare with ``local`` and ``cloud``.
    Capacities into t are finite, so the cut is finite whatever the constraints.
    """
    view = model.source.view
    no_rtt = Link(link.bandwidth_bps, 0.0)

    def capacity(cost: SplitCost) -> int:
        return round(objective.score(cost, no_rtt) * _RESOLUTION)

    edge_scale, cloud_scale = model.edge.node_ms, model.cloud.node_ms
    producers: dict[int, list[str]] = {i: [o for o in view.graph.node[i].output if o] for i in view.order}
    outputs = set(view.outputs)
    forced = set(view.order[: constraints.min_edge_ops])
    g = nx.DiGraph()
    g.add_nodes_from([_S, _T])
    for v in view.order:
        response = sum(model.transfers.sizes.get(o, 0) for o in producers[v] if o in outputs)
        if v in forced:
            g.add_edge(_S, v)
        else:
            g.add_edge(_S, v, capacity=capacity(SplitCost(0.0, cloud_ms=cloud_scale(v), response_bytes=response)))
        g.add_edge(v, _T, capacity=capacity(SplitCost(edge_scale(v))))
        for u in view.dag.predecessors(v):
            g.add_edge(v, u)  # no capacity: infinite
    readers: dict[str, list[int]] = {}
    for v in view.order:
        for t in view.reads[v]:
            readers.setdefault(t, []).append(v)
    for t, nodes in readers.items():
        source = view.producer.get(t, _S if t in view.inputs else None)
        if source is None:
            continue  # initializers and Constant outputs: each side keeps its own
        x = ("tensor", t)
        if t not in model.transfers.tensors or (constraints.no_raw_inputs and t in view.inputs):
            g.add_edge(source, x)
        else:
            g.add_edge(source, x, capacity=capacity(model.tensor_cost(t)))
        for v in nodes:
            g.add_edge(x, v)
    _, (edge_side, _) = nx.minimum_cut(g, _S, _T)
    return frozenset(v for v in edge_side if isinstance(v, int))


def best_split(
    model: CostModel, link: Link, objective: Objective | None = None, constraints: Constraints | None = None
) -> Result:
    """The split minimising ``objective`` (default: latency) on ``link`` under ``constraints``."""
    objective = objective or latency()
    constraints = constraints or Constraints()
    local, cloud = model.choice(model.nodes), _sendable_choice(model, frozenset())
    prefix = min_cut_prefix(model, link, objective, constraints)
    found = _sendable_choice(model, prefix) if prefix and prefix != model.nodes else None
    private = [c for c in (local, cloud, found) if c is not None and constraints.violation(model, c, measured=False) is None]

    def rank(c: Choice) -> tuple[float, int]:
        return objective.score(c.cost, link), len(c.prefix)

    best = min(private, key=rank)  # local is always private
    why = constraints.violation(model, best)
    if why is None:
        return Result(best, local, cloud)
    # over the memory ceiling or refused: the best of the candidates that pass, checked cheapest first
    # (a refusal may have to run the split)
    pool = sorted([*private, *_sweep_candidates(model)], key=rank)
    fitting = next((c for c in pool if constraints.violation(model, c) is None), None)
    if fitting is None:
        raise PartitionError(f"no split satisfies the constraints: even the best one breaks {why}")
    note = f"the optimal split {best.id} breaks {why}; taking the best of the candidate cuts that pass"
    return Result(fitting, local, cloud, [note])


def _sendable_choice(model: CostModel, prefix: frozenset[int]) -> Choice | None:
    """The split with ``prefix``, or None if it would send a tensor the codec refuses."""
    try:
        return model.choice(prefix)
    except PartitionError:
        return None


def _sweep_candidates(model: CostModel) -> list[Choice]:
    """Every candidate cut of the topological sweep (``cuts.candidate_cuts``) the codec can send."""
    view = model.source.view
    choices = [_sendable_choice(model, frozenset(view.ancestors(c.sent))) for c in candidate_cuts(view)]
    return [c for c in choices if c is not None]


@dataclass(frozen=True)
class Region:
    """Bandwidths (bits per second) over which ``choice`` is the best split."""

    low_bps: float
    high_bps: float
    choice: Choice


def pareto(
    model: CostModel,
    rtt_ms: float,
    objective: Objective | None = None,
    constraints: Constraints | None = None,
    low_bps: float = MIN_BANDWIDTH_BPS,
    high_bps: float = MAX_BANDWIDTH_BPS,
) -> list[Region]:
    """Every split that is best for some bandwidth in [low, high], with where it wins, by bandwidth.

    Each split's score is linear in 1/bandwidth, so the best score is the lower
    envelope of lines: solve at both ends, and where the winners differ, at the
    crossing of their lines; a third winner there splits the interval. Exact up
    to the search's own exactness, with one solve per breakpoint.
    """
    objective = objective or latency()
    constraints = constraints or Constraints()

    def solve(x: float) -> Choice:
        return best_split(model, Link(1.0 / x, rtt_ms), objective, constraints).best

    def score(c: Choice, x: float) -> float:
        return objective.score(c.cost, Link(1.0 / x, rtt_ms))

    breaks: list[tuple[float, Choice]] = []  # (x from which the choice wins, choice), by ascending x

    def envelope(lo: float, c_lo: Choice, hi: float, c_hi: Choice, depth: int) -> None:
        if c_lo.prefix == c_hi.prefix:
            return
        x = _crossing(c_lo, c_hi, lo, hi, score)
        c_mid = solve(x) if depth < 64 else c_lo
        if c_mid.prefix in (c_lo.prefix, c_hi.prefix) or score(c_mid, x) >= score(c_lo, x) - _tolerance(score(c_lo, x)):
            breaks.append((x, c_hi))
            return
        envelope(lo, c_lo, x, c_mid, depth + 1)
        envelope(x, c_mid, hi, c_hi, depth + 1)

    lo, hi = 1.0 / high_bps, 1.0 / low_bps
    c_lo, c_hi = solve(lo), solve(hi)
    envelope(lo, c_lo, hi, c_hi, 0)
    regions: list[Region] = []
    edges = [lo, *(x for x, _ in breaks), hi]
    choices = [c_lo, *(c for _, c in breaks)]
    for (a, b), choice in zip(zip(edges, edges[1:]), choices):
        if regions and regions[-1].choice.prefix == choice.prefix:
            regions[-1] = Region(1.0 / b, regions[-1].high_bps, choice)
        else:
            regions.append(Region(1.0 / b, 1.0 / a, choice))
    return sorted(regions, key=lambda r: r.low_bps)


def _crossing(a: Choice, b: Choice, lo: float, hi: float, score: Callable[[Choice, float], float]) -> float:
    """Where the lines of ``a`` and ``b`` (score against x = 1/bandwidth) cross, kept inside (lo, hi)."""
    slope = (score(a, hi) - score(a, lo)) - (score(b, hi) - score(b, lo))
    if slope == 0:
        return math.sqrt(lo * hi)
    t = (score(b, lo) - score(a, lo)) / slope
    return lo + min(max(t, 1e-9), 1 - 1e-9) * (hi - lo)


def _tolerance(value: float) -> float:
    return 1e-9 * abs(value) + 10 / _RESOLUTION
