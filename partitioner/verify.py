"""Verification: the edge segment then the cloud segment must reproduce the full model.

Both segments run in onnxruntime with default optimizations, as they will be
deployed; fusions that differ across a cut may change the last bits, so the
check is bit-exact where possible and within a relative tolerance otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

from partitioner import onnxio
from partitioner.errors import PartitionError
from partitioner.golden import Tensors
from splitpoint.compare import EXACT, TOLERANCE, difference


def edge_then_cloud(edge: ort.InferenceSession, cloud: ort.InferenceSession, inputs: Tensors) -> Tensors:
    """Every tensor of the run: raw inputs, edge outputs (sent and edge outputs), cloud outputs."""
    available = dict(inputs)
    edge_names = [o.name for o in edge.get_outputs()]
    available.update(zip(edge_names, edge.run(edge_names, {i.name: inputs[i.name] for i in edge.get_inputs()})))
    cloud_names = [o.name for o in cloud.get_outputs()]
    available.update(zip(cloud_names, cloud.run(cloud_names, {i.name: available[i.name] for i in cloud.get_inputs()})))
    return available


def verify_split(split_id: str, edge: Path, cloud: Path, cases: Sequence[tuple[Tensors, Tensors]]) -> dict[str, Any]:
    """The worst difference over the golden cases; PartitionError when beyond ``TOLERANCE``."""
    edge_sess = onnxio.session(edge, f"edge segment of split {split_id!r}")
    cloud_sess = onnxio.session(cloud, f"cloud segment of split {split_id!r}")
    worst = EXACT
    for k, (inputs, reference) in enumerate(cases):
        try:
            actual = edge_then_cloud(edge_sess, cloud_sess, inputs)
        except Exception as e:  # onnxruntime's own exception types
            raise PartitionError(f"split {split_id!r} fails in onnxruntime: {str(e).strip().splitlines()[0]}") from None
        for name, ref in reference.items():
            got = actual[name]
            if got.shape != ref.shape or got.dtype != ref.dtype:
                raise PartitionError(
                    f"split {split_id!r} gives output {name!r} as {got.dtype}{list(got.shape)} "
                    f"where the model gives {ref.dtype}{list(ref.shape)}"
                )
        d = difference(reference, actual)
        if not d.ok:
            raise PartitionError(
                f"split {split_id!r} does not reproduce the model on golden case {k}: outputs differ by "
                f"max_abs={d.max_abs:.3g}, max_rel={d.max_rel:.3g} (tolerance {TOLERANCE:g})"
            )
        worst = worst.worst(d)
    return worst.as_dict()
