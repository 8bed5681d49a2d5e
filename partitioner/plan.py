"""``plan``: the best split per link, what it costs and what it saves, from an edge and a cloud profile.

For each link the plan gives the best split under the objective and
constraints, its predicted latency broken down (edge / transfer / cloud) and
the speedup over running all on the edge and over sending the raw inputs. It
also sweeps the bandwidth from 0.1 to 1000 Mbit/s (at the links' median RTT)
and lists where each split wins. Without a profile for a side, this machine is
profiled for it and the plan says so.

JSON (``Plan.to_json``):

    {"format": "splitpoint-plan", "version": 1,
     "model": {"file", "sha256", "compute_nodes"}, "codec",
     "objective": {"name", "unit"},
     "constraints": {"min_edge_ops", "no_raw_inputs", "edge_memory_mb"},
     "profiles": {"edge"|"cloud": {"file" (null if measured for this plan), "threads", "backend",
                                  "version", "machine", "end_to_end_ms"}},
     "splits": [{"id", "at", "sent", "edge_nodes", "cloud_nodes", "edge_memory_mb",
                 "predicted": SplitCost.to_json()}],
     "links": [{"link", "bandwidth_bps", "rtt_ms", "best", "score", "latency_ms",
                "breakdown": {"edge_ms", "transfer_ms", "cloud_ms"},
                "speedup_vs_local", "speedup_vs_cloud", "latency_ms_by_split": {id: ms}, "notes"}],
     "sweep": {"rtt_ms", "regions": [{"from_bps", "to_bps", "split"}]},
     "notes": [...],
     "calibration": {"file", "samples", "codec", "min_agreement", "max_rel_error", "classifier_outputs",
                     "splits": [{"id", "at", "sent", "samples", "top1", "max_abs", "max_rel", "offered", "refused"}]}}

"calibration" is there only when the plan was given calibration inputs; its
splits are every split checked (each one shown, and each one the search
considered and refused).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from partitioner.calibration import Agreement, CalibrationArg, SplitChecker, Threshold, load_calibrator
from partitioner.costmodel import Choice
from partitioner.errors import PartitionError
from partitioner.formats import open_model
from partitioner.objectives import OBJECTIVES, Objective
from partitioner.pricing import Pricing, ProfileArg
from partitioner.profile import Profile
from partitioner.search import Constraints, Region, Result, best_split, pareto
from splitpoint import defaults
from splitpoint.bundle import LOCAL
from splitpoint.codec import parse as parse_codec
from splitpoint.cost import Link

FORMAT = "splitpoint-plan"
VERSION = 1


@dataclass(frozen=True)
class LinkPlan:
    link: Link
    result: Result

    @property
    def best(self) -> Choice:
        return self.result.best

    def speedup(self, other: Choice | None) -> float | None:
        """How many times faster the best split is than ``other`` on this link (None without ``other``)."""
        if other is None:
            return None
        return other.cost.latency_ms(self.link) / self.best.cost.latency_ms(self.link)


@dataclass
class Plan:
    model: Path
    model_sha256: str
    compute_nodes: int
    codec: str
    objective: Objective
    constraints: Constraints
    profiles: dict[str, Profile]
    measured_here: dict[str, bool]
    links: list[LinkPlan]
    sweep_rtt_ms: float
    sweep: list[Region]
    notes: list[str] = field(default_factory=list)
    calibration: SplitChecker | None = None  # every split checked on the calibration inputs, refused ones too

    @property
    def splits(self) -> list[Choice]:
        """The splits worth showing: local, cloud, the sweep's winners and each link's best, by prefix size."""
        first = self.links[0].result
        seen: dict[frozenset[int], Choice] = {}
        for c in [first.local, first.cloud, *(r.choice for r in self.sweep), *(lp.best for lp in self.links)]:
            if c is not None:
                seen.setdefault(c.prefix, c)
        return sorted(seen.values(), key=_table_order)

    def to_text(self) -> str:
        lines = [f"plan for {self.model.name} ({self.compute_nodes} nodes), codec {self.codec}, "
                 f"objective {self.objective.name} ({self.objective.unit})"]
        for side, p in self.profiles.items():
            where = "measured here for this plan" if self.measured_here[side] else str(p.path)
            lines.append(f"{side} profile: {where}: {p.summary()}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append("")
        show_score = self.objective.name != "latency"
        head = f"{'link':<16} {'best split':<34} {'latency ms':>10} {'edge':>8} {'transfer':>9} {'cloud':>8} "
        head += f"{'vs local':>9} {'vs cloud':>9}" + (f" {self.objective.unit:>10}" if show_score else "")
        lines.append(head)
        for lp in self.links:
            b = lp.best.cost.breakdown(lp.link)
            row = f"{str(lp.link):<16} {_short(lp.best.id, 34):<34} {b.total_ms:>10.2f} {b.edge_ms:>8.2f} "
            row += f"{b.transfer_ms:>9.2f} {b.cloud_ms:>8.2f} {_times(lp.speedup(lp.result.local)):>9} "
            row += f"{_times(lp.speedup(lp.result.cloud)):>9}"
            if show_score:
                row += f" {self.objective.score(lp.best.cost, lp.link):>10.2f}"
            lines.append(row)
        lines.append("")
        lines.append("to cut there: splitpoint split MODEL -o BUNDLE --at ...")
        for lp in self.links:
            where = f"--at {','.join(lp.best.at)}" if lp.best.at else f"split {lp.best.id!r} is in every bundle"
            lines.append(f"  {str(lp.link):<16} {where}")
            lines += [f"  {'':<16} note: {n}" for n in lp.result.notes]
        lines.append("")
        lines.append("splits (predicted latency ms per link, * = best):")
        header = f"  {'split':<34} {'edge ms':>8} {'cloud ms':>8} {'sent B':>11} {'edge MB':>8}"
        lines.append(header + "".join(f" {str(lp.link):>14}" for lp in self.links))
        for c in self.splits:
            row = f"  {_short(c.id, 34):<34} {c.cost.edge_ms:>8.2f} {c.cost.cloud_ms:>8.2f} {c.cost.sent_bytes:>11,} "
            row += f"{c.edge_mb:>8.1f}"
            for lp in self.links:
                mark = "*" if lp.best.prefix == c.prefix else " "
                row += f" {c.cost.latency_ms(lp.link):>13.2f}{mark}"
            lines.append(row)
        lines.append("")
        lines.append(f"best split by bandwidth (RTT {self.sweep_rtt_ms:g} ms):")
        for r in self.sweep:
            lines.append(f"  {_mbit(r.low_bps):>9} - {_mbit(r.high_bps):<9} Mbit/s  {r.choice.id}")
        if self.calibration is not None:
            lines += ["", *self._calibration_text(self.calibration)]
        return "\n".join(lines)

    def _calibration_text(self, checker: SplitChecker) -> list[str]:
        c = checker.calibrator
        rule = f"top-1 agreement >= {c.threshold.min_agreement:g}"
        if c.threshold.max_rel_error is not None:
            rule += f" and max_rel <= {c.threshold.max_rel_error:g}"
        lines = [f"calibration: {c.calibration.samples} sample(s) from {c.calibration.path.name}, codec {c.codec.spec}; "
                 f"a split is offered when {rule} (local always is)"]
        lines.append(f"  {'split':<34} {'top-1':>6} {'max abs':>10} {'max rel':>10}  offered")
        for choice, a in _by_prefix(checker.checked.values()):
            status = "yes" if a.offered else f"no: {a.refused}"
            lines.append(f"  {_short(choice.id, 34):<34} {_figure(a.top1, '.3f'):>6} {_figure(a.max_abs, '.3g'):>10} "
                         f"{_figure(a.max_rel, '.3g'):>10}  {status}")
        return lines

    def to_json(self) -> dict[str, Any]:
        calibrated = {} if self.calibration is None else {"calibration": {
            **self.calibration.calibrator.to_json(),
            "splits": [{"id": c.id, "at": list(c.at), "sent": list(c.sent), **a.to_json()}
                       for c, a in _by_prefix(self.calibration.checked.values())],
        }}
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": {"file": self.model.name, "sha256": self.model_sha256, "compute_nodes": self.compute_nodes},
            "codec": self.codec,
            "objective": {"name": self.objective.name, "unit": self.objective.unit},
            "constraints": {
                "min_edge_ops": self.constraints.min_edge_ops,
                "no_raw_inputs": self.constraints.no_raw_inputs,
                "edge_memory_mb": self.constraints.edge_memory_mb,
            },
            "profiles": {side: _profile_json(p, self.measured_here[side]) for side, p in self.profiles.items()},
            "splits": [_choice_json(c, self.compute_nodes) for c in self.splits],
            "links": [self._link_json(lp) for lp in self.links],
            "sweep": {
                "rtt_ms": self.sweep_rtt_ms,
                "regions": [{"from_bps": r.low_bps, "to_bps": r.high_bps, "split": r.choice.id} for r in self.sweep],
            },
            "notes": list(self.notes),
            **calibrated,
        }

    def _link_json(self, lp: LinkPlan) -> dict[str, Any]:
        b = lp.best.cost.breakdown(lp.link)
        return {
            "link": str(lp.link),
            "bandwidth_bps": lp.link.bandwidth_bps,
            "rtt_ms": lp.link.rtt_ms,
            "best": lp.best.id,
            "score": self.objective.score(lp.best.cost, lp.link),
            "latency_ms": b.total_ms,
            "breakdown": {"edge_ms": b.edge_ms, "transfer_ms": b.transfer_ms, "cloud_ms": b.cloud_ms},
            "speedup_vs_local": lp.speedup(lp.result.local),
            "speedup_vs_cloud": lp.speedup(lp.result.cloud),
            "latency_ms_by_split": {c.id: c.cost.latency_ms(lp.link) for c in self.splits},
            "notes": list(lp.result.notes),
        }


def _profile_json(p: Profile, measured_here: bool) -> dict[str, Any]:
    return {
        "file": None if measured_here else str(p.path),
        "threads": p.threads,
        "backend": p.backend["name"],
        "version": p.backend["version"],
        "machine": p.machine,
        "end_to_end_ms": p.end_to_end_ms,
    }


def _choice_json(c: Choice, total: int) -> dict[str, Any]:
    return {
        "id": c.id,
        "at": list(c.at),
        "sent": list(c.sent),
        "edge_nodes": len(c.prefix),
        "cloud_nodes": total - len(c.prefix),
        "edge_memory_mb": round(c.edge_mb, 3),
        "predicted": c.cost.to_json(),
    }


def _table_order(c: Choice) -> tuple[bool, bool, int]:
    """Cloud first, local last, the others by prefix size."""
    return c.id != "cloud", c.id == LOCAL, len(c.prefix)


def _by_prefix(checked: Iterable[tuple[Choice, Agreement]]) -> list[tuple[Choice, Agreement]]:
    return sorted(checked, key=lambda item: _table_order(item[0]))


def _figure(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 2] + ".."


def _times(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _mbit(bps: float) -> str:
    return f"{bps / 1e6:.3g}"


def resolve_objective(objective: Objective | str) -> Objective:
    if isinstance(objective, Objective):
        return objective
    if objective not in OBJECTIVES:
        raise PartitionError(f"--objective {objective}: unknown; use one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[objective]()


def plan(
    model: str | Path,
    links: Sequence[Link | str],
    edge_profile: ProfileArg = None,
    cloud_profile: ProfileArg = None,
    codec: str = defaults.CODEC,
    objective: Objective | str = "latency",
    constraints: Constraints | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    cloud_threads: int | None = None,
    log: Callable[[str], None] | None = None,
    calibration: CalibrationArg = None,
    min_agreement: float = defaults.MIN_AGREEMENT,
    max_rel_error: float | None = None,
) -> Plan:
    """The best split of ``model`` for each link, from the two profiles.

    A side without a profile is profiled on this machine: the edge with one
    thread, the cloud with ``cloud_threads`` (default: every core). With
    ``calibration`` (an .npz of input samples, see ``partitioner.calibration``)
    each split considered runs through the codec on those samples, and one that
    falls under ``min_agreement`` (or over ``max_rel_error``) is not offered.
    """
    log = log or (lambda _: None)
    parsed = [link if isinstance(link, Link) else Link.parse(link) for link in links]
    if not parsed:
        raise PartitionError("no --link given: name at least one, e.g. --link 10mbit/30ms")
    codec = parse_codec(codec).spec
    objective = resolve_objective(objective)
    constraints = constraints or Constraints()
    threshold = Threshold(min_agreement, max_rel_error)
    log(f"loading {model}")
    source = open_model(model, shapes, log).source
    calibrator = load_calibrator(source.path, calibration, codec, threshold, log)  # before profiling: fails fast
    pricing = Pricing.of(source, edge_profile, cloud_profile, codec, log, cloud_threads)
    cost_model, notes = pricing.cost_model, pricing.notes
    checker = None
    if calibrator is not None:
        checker = SplitChecker(cost_model, calibrator, log)
        constraints = replace(constraints, refusal=checker.refusal)
        notes += [calibrator.note] if calibrator.note else []
    log(f"searching the best split for {len(parsed)} link(s)")
    link_plans = [LinkPlan(link, best_split(cost_model, link, objective, constraints)) for link in parsed]
    sweep_rtt = statistics.median(link.rtt_ms for link in parsed)
    log(f"sweeping the bandwidth from 0.1 to 1000 Mbit/s at RTT {sweep_rtt:g} ms")
    sweep = pareto(cost_model, sweep_rtt, objective, constraints)
    if constraints.edge_memory_mb is not None:
        notes.append("--edge-memory-mb is checked on candidate splits, not inside the min-cut (peak memory does not add up)")
    result = Plan(source.path, cost_model.model_sha256, source.compute_nodes, codec, objective, constraints,
                  pricing.profiles, pricing.measured_here, link_plans, sweep_rtt, sweep, notes, checker)
    if checker is not None:
        for choice in result.splits:
            checker.agreement(choice)  # every split shown says how it fared, refused or not
    return result
