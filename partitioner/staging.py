"""Atomic bundle output: write into a hidden sibling directory, rename it into place at the end.

A failure at any point leaves the target as it was and removes the partial
directory. Replacing an existing non-empty directory needs ``overwrite``, and
only a bundle (a directory with a manifest) is ever replaced.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from partitioner.errors import PartitionError
from splitpoint.bundle import MANIFEST


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse early a target that ``staged_directory`` would refuse at the end."""
    if out.exists() and not out.is_dir():
        raise PartitionError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise PartitionError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        if not (out / MANIFEST).is_file():
            raise PartitionError(f"{out} is not a bundle (no {MANIFEST}); refusing to replace it")


@contextmanager
def staged_directory(out: Path, overwrite: bool) -> Iterator[Path]:
    """A fresh directory that becomes ``out`` if the block completes, and vanishes if it fails."""
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield staging
        check_target(out, overwrite)
        _replace(out, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace(out: Path, staging: Path) -> None:
    if not out.exists():
        staging.rename(out)
        return
    old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
    out.rename(old)
    staging.rename(out)
    shutil.rmtree(old)
