"""Secrets both sides read the same way: the bearer token shared by edge and worker."""

from __future__ import annotations

import os
from pathlib import Path

from splitpoint.errors import SplitpointError

TOKEN_ENV = "SPLITPOINT_TOKEN"  # where the commands find the token without --token-file


def read_token(path: str | Path) -> str:
    """The bearer token in a file (surrounding whitespace, such as a final newline, stripped)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise SplitpointError(f"token file {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if not token:
        raise SplitpointError(f"token file {path}: it is empty")
    return token


def token_from(path: str | Path | None) -> str | None:
    """The token from ``path`` if given, else from the environment, else None."""
    return read_token(path) if path else os.environ.get(TOKEN_ENV) or None
