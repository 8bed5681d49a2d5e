"""Candidate cuts with their measured sizes, the automatic choice, and ``inspect``'s report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from partitioner.cuts import CandidateCut, candidate_cuts
from partitioner.errors import PartitionError
from partitioner.formats import open_model
from partitioner.measure import TensorTable
from splitpoint.bundle import TensorSpec


@dataclass(frozen=True)
class Candidate:
    """A valid cut: ``prefix_nodes`` of ``total_nodes`` compute nodes run before it."""

    index: int
    prefix_nodes: int
    total_nodes: int
    tensors: list[TensorSpec]
    bytes: int

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    @property
    def at(self) -> str:
        """The cut as ``--at`` takes it."""
        return ",".join(self.names)

    @property
    def balanced(self) -> bool:
        """At least a third of the nodes on each side."""
        return 3 * self.prefix_nodes >= self.total_nodes and 3 * (self.total_nodes - self.prefix_nodes) >= self.total_nodes


def describe_candidates(cuts: Sequence[CandidateCut], table: TensorTable, total_nodes: int) -> list[Candidate]:
    """Candidates for ``cuts``, leaving out those that would send a tensor splitpoint cannot encode."""
    candidates: list[Candidate] = []
    for cut in cuts:
        try:
            tensors = [table.spec(t) for t in cut.sent]
        except PartitionError:
            continue
        nbytes = sum(t.bytes or 0 for t in tensors)
        candidates.append(Candidate(len(candidates), cut.prefix_nodes, total_nodes, tensors, nbytes))
    return candidates


def auto_candidate(candidates: Sequence[Candidate]) -> Candidate:
    """The fewest bytes crossing among balanced cuts (ties: the earlier one).

    A graph too small for any balanced cut gets its most balanced one.
    """
    if not candidates:
        raise PartitionError("the model has no cut between its nodes; use split 'local' or 'cloud'")
    pool = [c for c in candidates if c.balanced] or [
        max(candidates, key=lambda c: min(c.prefix_nodes, c.total_nodes - c.prefix_nodes))
    ]
    return min(pool, key=lambda c: c.bytes)


@dataclass
class InspectReport:
    model: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    candidates: list[Candidate]
    total_nodes: int
    notes: list[str] = field(default_factory=list)

    @property
    def auto(self) -> Candidate | None:
        return auto_candidate(self.candidates) if self.candidates else None

    def to_text(self) -> str:
        lines = [f"model {self.model}: {self.total_nodes} nodes"]
        lines += [f"  input   {_spec_text(t)}" for t in self.inputs]
        lines += [f"  output  {_spec_text(t)}" for t in self.outputs]
        lines.append(f"candidate cuts ({len(self.candidates)}), bytes measured on the golden input:")
        lines.append(f"  {'#':>4}  {'edge/cloud nodes':>16}  {'bytes':>12}  tensors")
        auto = self.auto
        for c in self.candidates:
            mark = "*" if c is auto else " "
            split_nodes = f"{c.prefix_nodes}/{c.total_nodes - c.prefix_nodes}"
            first, *rest = [_spec_text(t) for t in c.tensors]
            lines.append(f"{mark} {c.index:>4}  {split_nodes:>16}  {c.bytes:>12,}  {first}")
            lines += [f"  {'':>4}  {'':>16}  {'':>12}  {more}" for more in rest]
        if auto is None:
            lines.append("  (none: the only splits are 'local' and 'cloud')")
        else:
            lines.append(f"* auto: candidate {auto.index}, --at {auto.at}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _spec_text(t: TensorSpec) -> str:
    dims = ",".join("?" if d is None else str(d) for d in t.shape)
    return f"{t.name} {t.dtype}[{dims}] {t.bytes:,} B" if t.bytes is not None else f"{t.name} {t.dtype}[{dims}]"


def inspect(model: str | Path, shapes: Mapping[str, Sequence[int]] | None = None) -> InspectReport:
    """The model's inputs, outputs and candidate cuts with the bytes each would send."""
    notes: list[str] = []
    fmt = open_model(model, shapes, notes.append)
    source, view = fmt.source, fmt.source.view
    cuts = candidate_cuts(view)
    table = fmt.measure([*view.inputs, *view.outputs, *(t for c in cuts for t in c.sent)], source.sample(0), notes.append)
    return InspectReport(
        model=source.path.name,
        inputs=[table.spec(t) for t in view.inputs],
        outputs=[table.spec(t) for t in view.outputs],
        candidates=describe_candidates(cuts, table, source.compute_nodes),
        total_nodes=source.compute_nodes,
        notes=notes,
    )
