"""Verification: the edge segment then the cloud segment must reproduce the full model.

The segments run as the edge and the worker will run them: through
``splitpoint.backends.load_session``, which picks onnxruntime (default
optimizations) for ``.onnx`` files and LiteRT for ``.tflite`` files. Fusions
that differ across a cut may change the last bits, so the result is judged by
``splitpoint.compare``'s rule: bit-exact where possible, within a bound
scaled to the output's magnitude and dtype otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from partitioner.errors import PartitionError
from partitioner.golden import Tensors
from splitpoint.backends import Session, load_session
from splitpoint.compare import EXACT, difference
from splitpoint.errors import SplitpointError, first_line

ENGINES = {"onnxruntime": "onnxruntime", "litert": "LiteRT"}  # Session.backend as messages name it


def edge_then_cloud(
    edge: Session | None, cloud: Session, inputs: Tensors, send: Callable[[str, np.ndarray], np.ndarray] | None = None
) -> Tensors:
    """Every tensor of the run: raw inputs, edge outputs (sent and edge outputs), cloud outputs.

    ``edge`` is None when the raw inputs are sent (the ``cloud`` split);
    ``send(name, value)`` stands for the wire (a lossy codec) between the two.
    """
    available = dict(inputs)
    if edge is not None:
        available.update(edge.run({s.name: inputs[s.name] for s in edge.inputs}))
    sent = {s.name: available[s.name] for s in cloud.inputs}
    if send is not None:
        sent = {name: send(name, value) for name, value in sent.items()}
    available.update(cloud.run(sent))
    return available


def verify_split(split_id: str, edge: Path, cloud: Path, cases: Sequence[tuple[Tensors, Tensors]]) -> dict[str, Any]:
    """The worst difference over the golden cases; PartitionError when beyond ``splitpoint.compare``'s rule."""
    edge_session, cloud_session = (load_segment(split_id, side, path) for side, path in (("edge", edge), ("cloud", cloud)))
    engine = ENGINES.get(edge_session.backend, edge_session.backend)
    worst = EXACT
    for k, (inputs, reference) in enumerate(cases):
        try:
            actual = edge_then_cloud(edge_session, cloud_session, inputs)
        except Exception as e:  # onnxruntime raises its own exception types, LiteRT sessions SplitpointError
            raise PartitionError(f"split {split_id!r} fails in {engine}: {first_line(e)}") from None
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
                f"split {split_id!r} does not reproduce the model on golden case {k}: outputs differ by {d.describe()}"
            )
        worst = worst.worst(d)
    return worst.as_dict()


def load_segment(split_id: str, side: str, path: Path) -> Session:
    """The session of one segment of a split; a PartitionError naming them if it does not load."""
    try:
        return load_session(path)
    except SplitpointError as e:
        raise PartitionError(f"split {split_id!r}: the {side} segment does not load: {first_line(e)}") from None
