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

from splitpoint import defaults
from splitpoint.errors import BundleError, SplitpointError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
LOCAL = "local"
CLOUD = "cloud"
TORCH = "torch"  # the backend that runs a bundle's PyTorch segments instead of its ONNX ones
NO_TORCH = "make the bundle from a torch module (splitpoint split FILE.py:FACTORY, or partitioner.split_torch)"

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
        name = _typed(d["name"], str, "tensor name")
        dims = _typed(d["shape"], list, f"shape of tensor {name!r}")
        for dim in dims:
            _typed(dim, (int, str, type(None)), f"dimension of tensor {name!r}")
        return cls(name, _typed(d["dtype"], str, f"dtype of tensor {name!r}"), tuple(dims),
                   _typed(d.get("bytes"), (int, type(None)), f"bytes of tensor {name!r}"))


@dataclass(frozen=True)
class Split:
    """One way to cut the model: the tensors sent and the two segment files.

    ``edge_file`` is None when nothing runs before the cut (the ``cloud``
    split sends the raw inputs); ``cloud_file`` is None for ``local``.
    ``edge_outputs`` are graph outputs the prefix already computes.
    ``torch_edge_file`` and ``torch_cloud_file`` are the same segments as
    PyTorch programs (``.pt2``), in bundles made from a torch module.
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
    torch_edge_file: str | None = None
    torch_cloud_file: str | None = None

    def segment_files(self, backend: str | None = None) -> tuple[str | None, str | None]:
        """The edge and cloud files to run: the bundle's own, or with ``backend="torch"`` the PyTorch ones."""
        if backend != TORCH:
            return self.edge_file, self.cloud_file
        if bool(self.edge_file) != bool(self.torch_edge_file) or bool(self.cloud_file) != bool(self.torch_cloud_file):
            raise BundleError(f"split {self.id!r} has no PyTorch segments; {NO_TORCH}")
        return self.torch_edge_file, self.torch_cloud_file

    @property
    def sent_names(self) -> list[str]:
        return [t.name for t in self.cut]

    @property
    def cut_bytes(self) -> int | None:
        sizes = [t.bytes for t in self.cut]
        return None if any(s is None for s in sizes) else sum(sizes)  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Split:
        split_id = _typed(d["id"], str, "split id")
        if not _SAFE_NAME.fullmatch(split_id):
            raise ValueError(f"split id {split_id!r} is not a model-name-safe slug")
        file = lambda key: _typed(d.get(key), (str, type(None)), f"{key} of split {split_id!r}")
        return cls(
            id=split_id,
            cut=tuple(TensorSpec.from_json(t) for t in _typed(d.get("cut", []), list, f"cut of split {split_id!r}")),
            edge_file=file("edge_file"),
            cloud_file=file("cloud_file"),
            edge_outputs=tuple(_typed(n, str, "edge output name") for n in d.get("edge_outputs", [])),
            edge_nodes=int(d.get("edge_nodes", 0)),
            cloud_nodes=int(d.get("cloud_nodes", 0)),
            predicted=dict(d.get("predicted", {})),
            verification=dict(d.get("verification", {})),
            torch_edge_file=file("torch_edge_file"),
            torch_cloud_file=file("torch_cloud_file"),
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
    codec: str = defaults.CODEC
    model_file: str = "model.onnx"
    golden: tuple[GoldenCase, ...] = ()
    profiles: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION
    torch_model_file: str | None = None  # the full model as a PyTorch program, beside the PyTorch segments
    torch_model_sha256: str | None = None  # of torch_model_file (bundles from before it was recorded have none)

    def split(self, split_id: str) -> Split:
        for s in self.splits:
            if s.id == split_id:
                return s
        known = ", ".join(s.id for s in self.splits)
        raise BundleError(f"bundle {self.name!r} has no split {split_id!r}; it has: {known}")

    def full_model_file(self, backend: str | None = None) -> str:
        """The full model to run: ``model_file``, or with ``backend="torch"`` the PyTorch program."""
        if backend not in (None, TORCH):
            raise SplitpointError(f"backend {backend!r}: use None (each file on the engine its type needs) or {TORCH!r}")
        if backend is None:
            return self.model_file
        if self.torch_model_file is None:
            raise BundleError(f"bundle {self.name!r} holds no PyTorch segments; {NO_TORCH}")
        return self.torch_model_file

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
            name = _typed(d["name"], str, "model name")
            if not _SAFE_NAME.fullmatch(name):
                raise ValueError(f"model name {name!r} is not a model-name-safe slug")
            if not _SHA256.fullmatch(_typed(d["model_sha256"], str, "model_sha256")):
                raise ValueError(f"model_sha256 {d['model_sha256']!r} is not 64 lowercase hex digits")
            manifest = cls(
                name=name,
                model_sha256=d["model_sha256"],
                opset=int(d["opset"]),
                inputs=tuple(TensorSpec.from_json(t) for t in d["inputs"]),
                outputs=tuple(TensorSpec.from_json(t) for t in d["outputs"]),
                splits=tuple(Split.from_json(s) for s in d["splits"]),
                default_split=d["default_split"],
                codec=_typed(d.get("codec", defaults.CODEC), str, "codec"),
                model_file=_typed(d.get("model_file", "model.onnx"), str, "model_file"),
                golden=tuple(GoldenCase(_typed(g["inputs"], str, "golden inputs"), _typed(g["outputs"], str, "golden outputs"))
                             for g in d.get("golden", [])),
                profiles=tuple(_typed(f, str, "profile file") for f in d.get("profiles", [])),
                torch_model_file=_typed(d.get("torch_model_file"), (str, type(None)), "torch_model_file"),
                torch_model_sha256=_typed(d.get("torch_model_sha256"), (str, type(None)), "torch_model_sha256"),
            )
            if manifest.torch_model_sha256 is not None and not _SHA256.fullmatch(manifest.torch_model_sha256):
                raise ValueError(f"torch_model_sha256 {manifest.torch_model_sha256!r} is not 64 lowercase hex digits")
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"manifest is malformed: {type(e).__name__}: {e}") from None
        ids = [s.id for s in manifest.splits]
        if len(set(ids)) != len(ids) or manifest.default_split not in ids:
            raise BundleError(f"manifest is malformed: split ids {ids} must be unique and hold the default split "
                              f"{manifest.default_split!r}")
        return manifest


_MODEL_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # what slug() makes: no path separators, no leading dot
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _typed(value: Any, kinds: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is one of ``kinds`` (bools are no ints here), else a TypeError naming ``what``."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool)):
        return value
    raise TypeError(f"{what} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r:.60}")


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
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise BundleError(f"{manifest_path}: not valid JSON ({str(e)[:200]})") from None
        if not isinstance(raw, dict):
            raise BundleError(f"{manifest_path}: expected a JSON object")
        self.manifest = Manifest.from_json(raw)
        for s in self.manifest.splits:
            for rel in (s.edge_file, s.cloud_file, s.torch_edge_file, s.torch_cloud_file):
                if rel is not None:
                    self.path(rel)
        if self.manifest.torch_model_file is not None:
            self.path(self.manifest.torch_model_file)

    @property
    def name(self) -> str:
        return self.manifest.name

    def path(self, rel: str) -> Path:
        """Resolve ``rel`` inside the bundle; refuse anything that escapes it or is missing."""
        if not isinstance(rel, str):
            raise BundleError(f"bundle {self.root}: path {rel!r} is not a string")
        try:
            p = (self.root / rel).resolve()
            if not p.is_relative_to(self.root):
                raise BundleError(f"bundle {self.root}: path {rel!r:.200} points outside the bundle")
            if not p.is_file():
                raise BundleError(f"bundle {self.root}: file {rel!r:.200} is missing")
        except (OSError, ValueError, RuntimeError) as e:  # a NUL byte, a name too long, a symlink loop (3.11)
            raise BundleError(f"bundle {self.root}: path {rel!r:.200} cannot be resolved ({str(e)[:100]})") from None
        return p

    def model_path(self) -> Path:
        return self.path(self.manifest.model_file)

    def check_model(self, backend: str | None = None) -> None:
        """Refuse a full model (with its external weights) whose sha256 is not the manifest's: another version.

        With ``backend="torch"`` the PyTorch program is checked too, where the manifest records its sha256.
        """
        model = self.model_path()
        data = model.with_name(model.name + ".data")
        _check_sha(self.root, self.manifest.model_file, file_sha256(model, *([data] if data.is_file() else [])),
                   self.manifest.model_sha256)
        m = self.manifest
        if backend == TORCH and m.torch_model_file is not None and m.torch_model_sha256 is not None:
            _check_sha(self.root, m.torch_model_file, file_sha256(self.path(m.torch_model_file)), m.torch_model_sha256)

    def golden_cases(self) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        cases = []
        for g in self.manifest.golden:
            with np.load(self.path(g.inputs)) as xi, np.load(self.path(g.outputs)) as yo:
                cases.append(({k: xi[k] for k in xi.files}, {k: yo[k] for k in yo.files}))
        return cases

    def __repr__(self) -> str:
        return f"Bundle({str(self.root)!r}, splits={[s.id for s in self.manifest.splits]})"


def _check_sha(root: Path, rel: str, sha: str, recorded: str) -> None:
    if sha != recorded:
        raise BundleError(f"bundle {root}: {rel} has sha256 {sha[:12]}..., the manifest says {recorded[:12]}...: "
                          "the model file was replaced or damaged")


def write_manifest(root: Path, manifest: Manifest) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
