"""The worker's model repository: every cloud segment of the served bundles.

Each segment is one OIP model named ``<bundle>.<split>``; it carries the
sha256 of the full model it was cut from so requests from another model
version can be refused. A served path is a bundle (it holds manifest.json) or
a directory of bundles (each subdirectory holding one).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from splitpoint.backends import OrtSession, Session, check_graph_opt, load_session, ort_providers
from splitpoint.bundle import MANIFEST, Bundle, segment_model_name
from splitpoint.errors import SplitpointError

log = logging.getLogger("splitpoint.cloud")


@dataclass(frozen=True)
class SessionSettings:
    """ONNX Runtime options for every served model's session (``--threads``, ``--graph-opt``, ``--providers``).

    ``providers`` None picks CUDA when this onnxruntime has it, and the CPU
    otherwise (or after it, for the nodes CUDA cannot run). Checked when made,
    so a wrong flag is reported before any model loads.
    """

    threads: int | None = None
    graph_opt: str = "all"
    providers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for flag, check in (("--graph-opt", lambda: check_graph_opt(self.graph_opt)),
                            ("--providers", lambda: ort_providers(self.providers))):
            try:
                check()
            except SplitpointError as e:
                raise SplitpointError(f"{flag}: {e}") from None

    def open(self, path: Path) -> Session:
        """The session for one segment: LiteRT for .tflite files (threads only), onnxruntime with every option otherwise."""
        if path.suffix == ".tflite":
            return load_session(path, threads=self.threads)
        return OrtSession(path, self.threads, graph_opt=self.graph_opt, providers=self.providers)


@dataclass
class Segment:
    name: str
    bundle: str
    split_id: str
    model_sha256: str
    path: Path
    session: Session


def find_bundles(paths: Iterable[str | Path]) -> list[Path]:
    """The bundles to serve: each path is a bundle, or a directory whose subdirectories with a manifest are."""
    found: dict[Path, None] = {}  # ordered and without repeats (DIR and DIR/bundle may both be given)
    for given in paths:
        path = Path(given)
        if (path / MANIFEST).is_file() or not path.is_dir():
            found[path.resolve()] = None  # Bundle() names what is wrong with a path that is no bundle
            continue
        inside = sorted(p for p in path.iterdir() if (p / MANIFEST).is_file())
        if not inside:
            raise SplitpointError(f"{path}: neither a bundle (no {MANIFEST}) nor a directory of bundles "
                                  f"(no subdirectory holds a {MANIFEST})")
        found.update((p.resolve(), None) for p in inside)
    return list(found)


def load_segments(paths: Iterable[str | Path], settings: SessionSettings | None = None) -> dict[str, Segment]:
    """Open every cloud segment of the bundles at or under ``paths``; refuse duplicate model names."""
    settings = settings or SessionSettings()
    segments: dict[str, Segment] = {}
    for bp in find_bundles(paths):
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
            if path == bundle.model_path():  # the "cloud" split serves the full model: it must be the manifest's version
                bundle.check_model()
            segments[name] = Segment(name, bundle.name, split.id, bundle.manifest.model_sha256, path, settings.open(path))
    return segments
