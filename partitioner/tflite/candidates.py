"""``inspect`` for .tflite models: the same report as for ONNX, from the main subgraph measured in LiteRT."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from partitioner.candidates import InspectReport, describe_candidates
from partitioner.cuts import candidate_cuts
from partitioner.tflite.measure import measure
from partitioner.tflite.source import TfliteSource


def inspect(model: str | Path, shapes: Mapping[str, Sequence[int]] | None = None) -> InspectReport:
    """The model's inputs, outputs and candidate cuts with the bytes each would send."""
    notes: list[str] = []
    source = TfliteSource.open(model, shapes, notes.append)
    view = source.view
    cuts = candidate_cuts(view)
    table = measure(source, [*view.inputs, *view.outputs, *(t for c in cuts for t in c.sent)], source.sample(0))
    return InspectReport(
        model=source.path.name,
        inputs=[table.spec(t) for t in view.inputs],
        outputs=[table.spec(t) for t in view.outputs],
        candidates=describe_candidates(cuts, table, source.compute_nodes),
        total_nodes=source.compute_nodes,
        notes=notes,
    )
