"""The worker's model repository: every cloud segment of the served bundles.

Each segment is one OIP model named ``<bundle>.<split>``; it carries the
sha256 of the full model it was cut from so requests from another model
version can be refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from splitpoint.backends import Session, load_session
from splitpoint.bundle import Bundle, segment_model_name
from splitpoint.errors import SplitpointError


@dataclass
class Segment:
    name: str
    bundle: str
    split_id: str
    model_sha256: str
    path: Path
    session: Session


def load_segments(bundle_paths: Iterable[str | Path], threads: int | None = None) -> dict[str, Segment]:
    """Open every cloud segment of the given bundles; refuse duplicate model names."""
    segments: dict[str, Segment] = {}
    for bp in bundle_paths:
        bundle = Bundle(bp)
        for split in bundle.manifest.splits:
            if split.cloud_file is None:
                continue
            name = segment_model_name(bundle.name, split.id)
            if name in segments:
                raise SplitpointError(
                    f"model {name!r} is served twice ({segments[name].path} and {bundle.root}); "
                    "give the bundles different names"
                )
            path = bundle.path(split.cloud_file)
            segments[name] = Segment(
                name=name,
                bundle=bundle.name,
                split_id=split.id,
                model_sha256=bundle.manifest.model_sha256,
                path=path,
                session=load_session(path, threads=threads),
            )
    return segments
