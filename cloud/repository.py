"""The worker's model repository: every cloud segment of the served bundles.

Each segment is one OIP model named ``<bundle>.<split>``; it carries the
sha256 of the full model it was cut from so requests from another model
version can be refused. A served path is a bundle (it holds manifest.json) or
a directory of bundles (each subdirectory holding one).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splitpoint.backends import Session, _spec, load_session
from splitpoint.bundle import MANIFEST, Bundle, segment_model_name
from splitpoint.errors import SplitpointError

log = logging.getLogger("splitpoint.cloud")

GRAPH_OPT_LEVELS = ("basic", "extended", "all")
AUTO_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True)
class SessionSettings:
    """ONNX Runtime options for every served model's session.

    ``providers`` None picks CUDA when this onnxruntime has it, and the CPU
    otherwise (or after it, for the nodes CUDA cannot run).
    """

    threads: int | None = None
    graph_opt: str = "all"
    providers: tuple[str, ...] | None = None

    def resolved_providers(self) -> list[str]:
        """The provider list, checked against what this onnxruntime build offers."""
        import onnxruntime as ort

        available = ort.get_available_providers()
        if self.providers is None:
            return [p for p in AUTO_PROVIDERS if p in available]
        resolved = []
        for name in self.providers:
            match = [p for p in available if p.lower() in (name.lower(), name.lower() + "executionprovider")]
            if not match:
                raise SplitpointError(f"--providers: {name!r} is not available in this onnxruntime; "
                                      f"it has: {', '.join(available)}")
            resolved.append(match[0])
        return resolved

    def session_options(self):
        """SessionOptions without thread spinning: spinning sessions of one process slow each other down."""
        import onnxruntime as ort

        if self.graph_opt not in GRAPH_OPT_LEVELS:
            raise SplitpointError(f"--graph-opt must be one of {', '.join(GRAPH_OPT_LEVELS)}, not {self.graph_opt!r}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{self.graph_opt.upper()}")
        if self.threads:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return opts


class WorkerOrtSession:
    """An onnxruntime session opened with the worker's SessionSettings (backends.OrtSession takes only threads)."""

    backend = "onnxruntime"

    def __init__(self, path: Path, settings: SessionSettings):
        import onnxruntime as ort

        options, providers = settings.session_options(), settings.resolved_providers()
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise SplitpointError(f"{path}: onnxruntime cannot load it: {str(e).splitlines()[0]}") from None
        self.path = path
        self.providers = self._session.get_providers()
        threads = f"{settings.threads} intra-op threads" if settings.threads else "default threads"
        self.description = f"onnxruntime on {', '.join(self.providers)}, graph optimisation {settings.graph_opt}, {threads}"
        self.inputs = [_spec(a) for a in self._session.get_inputs()]
        self.outputs = [_spec(a) for a in self._session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._output_names, self._session.run(self._output_names, dict(feeds))))


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
            session = (load_session(path, threads=settings.threads) if path.suffix == ".tflite"
                       else WorkerOrtSession(path, settings))
            segments[name] = Segment(name, bundle.name, split.id, bundle.manifest.model_sha256, path, session)
    return segments
