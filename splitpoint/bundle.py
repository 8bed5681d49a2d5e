"""The bundle: the deployable directory shared by partitioner, edge and cloud.

Only the standard library and numpy are used here, so the edge can read a
bundle without onnx. Every path in a manifest is resolved inside the bundle
directory; a manifest cannot point outside it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from splitpoint.errors import BundleError

SCHEMA_VERSION = 1
# Byte-shuffle then zstd level 1: fewer bytes than plain zstd on float activations
# at a similar speed (benchmarks/codec.md).
DEFAULT_CODEC = "shuffle-zstd:1"
MANIFEST = "manifest.json"
LOCAL = "local"
CLOUD = "cloud"

Dim = int | str | None  # int: fixed; str: symbolic (dynamic); None: unknown


@dataclass(frozen=True)
class TensorSpec:
    """A tensor at a graph boundary or crossing a cut.

    ``shape`` keeps dynamic dimensions symbolic; ``bytes`` is the size measured
    on the golden inputs (None when not measured).
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    bytes: int | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["shape"]), d.get("bytes"))


@dataclass(frozen=True)
class Split:
    """One way to cut the model: the tensors sent and the two segment files.

    ``edge_file`` is None when nothing runs before the cut (the ``cloud``
    split sends the raw inputs); ``cloud_file`` is None for ``local``.
    ``edge_outputs`` are graph outputs the prefix already computes.
    """

    id: str
    cut: tuple[TensorSpec, ...]
    edge_file: str | None
    cloud_file: str | None
    edge_outputs: tuple[str, ...] = ()
    edge_nodes: int = 0
    cloud_nodes: int = 0
    predicted: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)

    @property
    def sent_names(self) -> list[str]:
        return [t.name for t in self.cut]

    @property
    def cut_bytes(self) -> int | None:
        sizes = [t.bytes for t in self.cut]
        return None if any(s is None for s in sizes) else sum(sizes)  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Split:
        return cls(
            id=d["id"],
            cut=tuple(TensorSpec.from_json(t) for t in d.get("cut", [])),
            edge_file=d.get("edge_file"),
            cloud_file=d.get("cloud_file"),
            edge_outputs=tuple(d.get("edge_outputs", [])),
            edge_nodes=int(d.get("edge_nodes", 0)),
            cloud_nodes=int(d.get("cloud_nodes", 0)),
            predicted=dict(d.get("predicted", {})),
            verification=dict(d.get("verification", {})),
        )


@dataclass(frozen=True)
class GoldenCase:
    inputs: str
    outputs: str


@dataclass(frozen=True)
class Manifest:
    name: str
    model_sha256: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    splits: tuple[Split, ...]
    default_split: str
    codec: str = DEFAULT_CODEC
    model_file: str = "model.onnx"
    golden: tuple[GoldenCase, ...] = ()
    profiles: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def split(self, split_id: str) -> Split:
        for s in self.splits:
            if s.id == split_id:
                return s
        known = ", ".join(s.id for s in self.splits)
        raise BundleError(f"bundle {self.name!r} has no split {split_id!r}; it has: {known}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Manifest:
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"manifest schema_version {version!r} is not supported (this splitpoint reads {SCHEMA_VERSION})"
            )
        try:
            return cls(
                name=d["name"],
                model_sha256=d["model_sha256"],
                opset=int(d["opset"]),
                inputs=tuple(TensorSpec.from_json(t) for t in d["inputs"]),
                outputs=tuple(TensorSpec.from_json(t) for t in d["outputs"]),
                splits=tuple(Split.from_json(s) for s in d["splits"]),
                default_split=d["default_split"],
                codec=d.get("codec", DEFAULT_CODEC),
                model_file=d.get("model_file", "model.onnx"),
                golden=tuple(GoldenCase(**g) for g in d.get("golden", [])),
                profiles=tuple(d.get("profiles", [])),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"manifest is malformed: {type(e).__name__}: {e}") from None


_MODEL_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def slug(text: str, limit: int = 48) -> str:
    """A file- and model-name-safe form of ``text`` (used for split ids)."""
    s = _MODEL_NAME_UNSAFE.sub("_", text).strip("._-") or "t"
    if len(s) > limit:
        s = s[: limit - 9] + "_" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return s


def segment_model_name(bundle_name: str, split_id: str) -> str:
    """The OIP model name of a cloud segment; the Triton export uses it too."""
    return f"{bundle_name}.{split_id}"


def health_service(model_name: str, model_sha256: str) -> str:
    """The grpc.health.v1 service name that is SERVING only where this model version is.

    The edge probes it, so a worker that is up but serves another version of
    the model does not close the edge's circuit.
    """
    return f"{model_name}@{model_sha256}"


def file_sha256(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class Bundle:
    """A bundle directory with a validated manifest."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        manifest_path = self.root / MANIFEST
        if not self.root.is_dir():
            raise BundleError(f"bundle {root}: not a directory")
        if not manifest_path.is_file():
            raise BundleError(f"bundle {root}: no {MANIFEST} (was it written by `splitpoint split`?)")
        try:
            raw = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BundleError(f"{manifest_path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise BundleError(f"{manifest_path}: expected a JSON object")
        self.manifest = Manifest.from_json(raw)
        for s in self.manifest.splits:
            for rel in (s.edge_file, s.cloud_file):
                if rel is not None:
                    self.path(rel)

    @property
    def name(self) -> str:
        return self.manifest.name

    def path(self, rel: str) -> Path:
        """Resolve ``rel`` inside the bundle; refuse anything that escapes it or is missing."""
        p = (self.root / rel).resolve()
        if not p.is_relative_to(self.root):
            raise BundleError(f"bundle {self.root}: path {rel!r} points outside the bundle")
        if not p.is_file():
            raise BundleError(f"bundle {self.root}: file {rel!r} is missing")
        return p

    def model_path(self) -> Path:
        return self.path(self.manifest.model_file)

    def golden_cases(self) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        cases = []
        for g in self.manifest.golden:
            with np.load(self.path(g.inputs)) as xi, np.load(self.path(g.outputs)) as yo:
                cases.append(({k: xi[k] for k in xi.files}, {k: yo[k] for k in yo.files}))
        return cases

    def __repr__(self) -> str:
        return f"Bundle({str(self.root)!r}, splits={[s.id for s in self.manifest.splits]})"


def write_manifest(root: Path, manifest: Manifest) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
