"""The partitioner's user-facing error."""

from __future__ import annotations

from splitpoint.errors import SplitpointError


class PartitionError(SplitpointError):
    """A model, a cut or a bundle target the partitioner cannot use; one line naming what."""


def first_line(e: BaseException) -> str:
    """The first line of an engine's error (onnx, onnxruntime and LiteRT write pages), or its type when empty."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
