"""The boundary term of a profile: what a cut costs beyond its nodes' times, per MB crossing, measured on the device.

Node times come from the whole model, where no tensor ever leaves the
engine. A cut makes work the whole model never does: onnxruntime converts a
tensor out of its blocked NCHWc layout at the end of the prefix
(ReorderOutput) and back at the start of the suffix (ReorderInput); LiteRT
copies a delegate's output out and the next one's input in. That work grows
with the tensor (benchmarks/prediction.md: a MobileNetV2-like cloud side
missed by 23% without it).

So while a model is profiled, a few of its own cuts are written as real
segments (with the format's ``write_segment``, as ``split`` writes them) and
timed inside the profiling loop, under the same load as everything else:
the cut sending the most bytes, and cuts spread over the graph in
topological order. Each segment's residual (measured minus what the node
times predict for it) is fitted against the MB it outputs (prefix: ``out``)
or receives (suffix: ``in``) by least squares through the origin. A negative
slope is clipped to 0: a boundary adds work, and a negative fit is noise or
something per-byte cannot explain. A model with no cut sending bytes gets 0.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from partitioner.cuts import CandidateCut, Cut, candidate_cuts, resolve_cut
from partitioner.errors import PartitionError
from partitioner.formats import ModelFormat, write_segments
from partitioner.golden import Tensors
from partitioner.measure import TensorTable
from partitioner.profile_timing import Opener, Timed
from splitpoint.errors import SplitpointError, first_line

CUTS = 3  # cuts timed per profile: the biggest and a spread


@dataclass(frozen=True)
class BoundaryCut:
    """One cut the boundary was fitted on: its segments measured and as the node times predict them."""

    sent: tuple[str, ...]
    mb: float  # tensors the prefix makes and the suffix receives, 10^6 bytes
    prefix_ms: float
    prefix_predicted_ms: float
    suffix_ms: float
    suffix_predicted_ms: float

    def to_json(self) -> dict[str, Any]:
        return {"sent": list(self.sent), **{k: round(v, 6) for k, v in vars(self).items() if k != "sent"}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BoundaryCut:
        return cls(tuple(d["sent"]), *(float(d[k]) for k in _FIGURES))


_FIGURES = ("mb", "prefix_ms", "prefix_predicted_ms", "suffix_ms", "suffix_predicted_ms")


@dataclass(frozen=True)
class Boundary:
    """Milliseconds per MB crossing a cut: ``out`` at the end of a prefix, ``in`` at the start of a suffix."""

    out_ms_per_mb: float = 0.0
    in_ms_per_mb: float = 0.0
    cuts: tuple[BoundaryCut, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"out_ms_per_mb": round(self.out_ms_per_mb, 6), "in_ms_per_mb": round(self.in_ms_per_mb, 6),
                "cuts": [c.to_json() for c in self.cuts]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Boundary:
        return cls(float(d["out_ms_per_mb"]), float(d["in_ms_per_mb"]),
                   tuple(BoundaryCut.from_json(c) for c in d.get("cuts", ())))


@dataclass
class _Pair:
    cut: Cut
    prefix: Timed
    suffix: Timed
    nbytes: int = 0  # what the prefix outputs for the suffix, from its first run


class BoundaryProbe:
    """Real segments of a few cuts, timed as often as the caller runs them; ``fit`` turns them into a ``Boundary``."""

    def __init__(self, fmt: ModelFormat, opener: Opener, log: Callable[[str], None], count: int = CUTS):
        view = fmt.source.view
        candidates = [c for c in candidate_cuts(view) if any(t in view.producer for t in c.sent)]
        names = [*view.inputs, *view.outputs, *(t for c in candidates for t in c.sent)]
        table = fmt.measure(names, fmt.source.sample(0), log) if candidates else None
        self._tmp = tempfile.TemporaryDirectory(prefix="splitpoint-boundary-")
        self._pairs: list[_Pair] = []
        self._produced = set(view.producer)
        chosen = _chosen(candidates, table, self._produced, count) if table is not None else []
        if chosen:
            log(f"timing {len(chosen)} cut(s) as real segments, to price the boundary of a cut")
        root = Path(self._tmp.name)
        for k, candidate in enumerate(chosen):
            cut = resolve_cut(view, candidate.sent)
            try:
                edge, cloud = write_segments(fmt, table, cut, f"boundary{k}", root)
                self._pairs.append(_Pair(cut, Timed(opener(root / edge)), Timed(opener(root / cloud))))
            except SplitpointError as e:  # the model still profiles; this cut just does not price the boundary
                log(f"note: cut {','.join(cut.sent)} not timed for the boundary: {first_line(e)}")

    def run(self, feeds: Tensors, keep: bool) -> None:
        """Each prefix, then its suffix on what the prefix made."""
        for pair in self._pairs:
            made = pair.prefix.run(feeds, keep)
            if not pair.nbytes:
                pair.nbytes = sum(v.nbytes for name, v in made.items() if name in pair.cut.sent and name in self._produced)
            pair.suffix.run({**feeds, **made}, keep)

    def fit(self, predict: Callable[[Collection[int]], float]) -> Boundary:
        """The boundary from the timed runs, ``predict`` giving a segment's time from its nodes; closes the probe."""
        self._tmp.cleanup()
        cuts = tuple(
            BoundaryCut(p.cut.sent, p.nbytes / 1e6, statistics.median(p.prefix.ms), predict(p.cut.prefix),
                        statistics.median(p.suffix.ms), predict(p.cut.suffix))
            for p in self._pairs if p.nbytes and p.prefix.ms
        )
        out = _slope([c.mb for c in cuts], [c.prefix_ms - c.prefix_predicted_ms for c in cuts])
        into = _slope([c.mb for c in cuts], [c.suffix_ms - c.suffix_predicted_ms for c in cuts])
        return Boundary(out, into, cuts)


def _chosen(candidates: list[CandidateCut], table: TensorTable, produced: set[str], count: int) -> list[CandidateCut]:
    """The candidate cut sending the most bytes the prefix makes, then others evenly spread in topological order."""
    sizes = {}
    for c in candidates:
        try:
            sizes[c] = sum(table.spec(t).bytes or 0 for t in c.sent if t in produced)
        except PartitionError:  # a type splitpoint cannot send: never a split, so not a sample of one
            continue
    sendable = [c for c in candidates if sizes.get(c)]
    if not sendable or count < 1:
        return []
    spread = [sendable[round(k * (len(sendable) - 1) / max(count - 1, 1))] for k in range(count)]
    return list(dict.fromkeys([max(sendable, key=sizes.__getitem__), *spread]))[:count]


def _slope(mb: Sequence[float], residual_ms: Sequence[float]) -> float:
    """Least squares through the origin, clipped to non-negative."""
    denominator = sum(x * x for x in mb)
    return max(0.0, sum(x * r for x, r in zip(mb, residual_ms)) / denominator) if denominator else 0.0
