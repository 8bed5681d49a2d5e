"""TFLite models, split in their own format: flatbuffer surgery with LiteRT's schema, no TensorFlow.

``partitioner.split`` and ``partitioner.inspect`` open ``.tflite`` files with ``partitioner.tflite.format``.
This module itself needs only the standard library, so checking a file's
kind loads nothing of LiteRT.
"""

from __future__ import annotations

from pathlib import Path

SUFFIX = ".tflite"
IDENTIFIER = b"TFL3"  # the flatbuffer file identifier, at bytes 4..8


def is_tflite(path: str | Path) -> bool:
    """A ``.tflite`` file, or any file carrying the TFLite flatbuffer identifier."""
    path = Path(path)
    if path.suffix == SUFFIX:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(8)[4:] == IDENTIFIER
    except OSError:
        return False
