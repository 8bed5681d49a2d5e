"""Verification on LiteRT: the edge segment then the cloud segment must reproduce the full model.

The segments run in LiteRT as the edge and the worker will run them; the
result is judged by ``splitpoint.compare`` like ONNX splits: bit-exact where
possible, within its tolerance otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from partitioner.errors import PartitionError
from partitioner.golden import Tensors
from partitioner.tflite.source import BACKEND
from splitpoint.backends import Session, load_session
from splitpoint.compare import EXACT, TOLERANCE, difference
from splitpoint.errors import SplitpointError


def edge_then_cloud(edge: Session, cloud: Session, inputs: Tensors) -> Tensors:
    """Every tensor of the run: raw inputs, edge outputs (sent and edge outputs), cloud outputs."""
    available = dict(inputs)
    available.update(edge.run(inputs))
    available.update(cloud.run({s.name: available[s.name] for s in cloud.inputs}))
    return available


def verify_split(split_id: str, edge: Path, cloud: Path, cases: Sequence[tuple[Tensors, Tensors]]) -> dict[str, Any]:
    """The worst difference over the golden cases; PartitionError when beyond ``TOLERANCE``."""
    try:
        edge_session, cloud_session = load_session(edge, backend=BACKEND), load_session(cloud, backend=BACKEND)
    except SplitpointError as e:
        raise PartitionError(f"split {split_id!r}: a segment does not load: {e}") from None
    worst = EXACT
    for k, (inputs, reference) in enumerate(cases):
        try:
            actual = edge_then_cloud(edge_session, cloud_session, inputs)
        except SplitpointError as e:
            raise PartitionError(f"split {split_id!r} fails in LiteRT: {e}") from None
        d = difference(reference, actual)
        if not d.ok:
            raise PartitionError(
                f"split {split_id!r} does not reproduce the model on golden case {k}: outputs differ by "
                f"max_abs={d.max_abs:.3g}, max_rel={d.max_rel:.3g} (tolerance {TOLERANCE:g})"
            )
        worst = worst.worst(d)
    return worst.as_dict()
