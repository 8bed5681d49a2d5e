"""Errors that reach users: each carries one line naming what is at fault."""

from __future__ import annotations


class SplitpointError(Exception):
    """Base of every error splitpoint reports to a user as a single line."""


class BundleError(SplitpointError):
    """A bundle directory or its manifest is missing, malformed or inconsistent."""


class CodecError(SplitpointError, ValueError):
    """A tensor could not be encoded or decoded; the message names the tensor."""


class WireError(SplitpointError, ValueError):
    """A request or response does not match what the model expects."""


def first_line(e: BaseException) -> str:
    """The first non-blank line of an engine's error (onnx, onnxruntime and LiteRT write pages), or its type when empty."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
