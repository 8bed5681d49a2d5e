"""Export a bundle's cloud segments as a Triton model repository.

Each segment becomes ``REPO/<model name>/config.pbtxt`` and
``REPO/<model name>/1/model.onnx`` (with its external weights file, if any),
named as the worker names it, so an edge can switch between ``splitpoint
serve`` and Triton (or KServe running Triton) without a change. The tensors'
names, types and dims are read from the segment by onnxruntime, as the
worker reads them for ModelMetadata.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_encoding

from cloud.batching import batchable
from cloud.core import VERSION  # the version the worker serves every segment as, and Triton's directory
from splitpoint import defaults, dtypes
from splitpoint.backends import load_session
from splitpoint.bundle import Bundle, TensorSpec, segment_model_name
from splitpoint.errors import SplitpointError

PLATFORM = "onnxruntime_onnx"
MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class Exported:
    """One exported segment: its model name, its directory, and the batch size Triton may form (0: none)."""

    name: str
    directory: Path
    max_batch_size: int


def export_triton(
    bundle_path: str | Path,
    repo: str | Path,
    max_batch: int = defaults.TRITON_MAX_BATCH,
    batch_delay_us: int | None = None,
    overwrite: bool = False,
) -> list[Exported]:
    """Write every cloud segment of the bundle into the Triton model repository ``repo``.

    Segments whose tensors share a dynamic first dimension get
    ``max_batch_size: max_batch`` and dims without it (Triton's convention);
    the others ``max_batch_size: 0`` and full dims. ``batch_delay_us`` adds
    ``dynamic_batching`` with that queue delay. Other models already in
    ``repo`` are left alone; an existing directory of the same name is
    replaced only with ``overwrite``. Everything is checked before anything is written.
    """
    if max_batch < 0 or (batch_delay_us is not None and batch_delay_us < 0):
        raise SplitpointError(f"--max-batch ({max_batch}) and --batch-delay-ms cannot be negative")
    bundle = Bundle(bundle_path)
    splits = [s for s in bundle.manifest.splits if s.cloud_file is not None]
    if not splits:
        raise SplitpointError(f"bundle {bundle.root}: no split has a cloud segment to export")
    for s in splits:
        if Path(s.cloud_file).suffix == ".tflite":
            raise SplitpointError(
                f"bundle {bundle.root}: split {s.id!r} has a TFLite cloud segment ({s.cloud_file}); Triton has no "
                "standard TFLite backend: split the ONNX form of the model to export it, or serve it with `splitpoint serve`"
            )
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise SplitpointError(f"-o {repo}: exists and is not a directory")
    plans = []
    for s in splits:
        name = segment_model_name(bundle.name, s.id)
        target = repo / name
        if target.exists() and not overwrite:
            raise SplitpointError(f"{target} already exists (use --force to replace it)")
        source = bundle.path(s.cloud_file)
        session = load_session(source)
        batch = max_batch if max_batch > 0 and batchable(session.inputs, session.outputs) else 0
        config = model_config(name, session.inputs, session.outputs, batch, batch_delay_us if batch else None)
        plans.append((Exported(name, target, batch), source, _external_files(bundle, source), config))
    for exported, source, extra, config in plans:
        shutil.rmtree(exported.directory, ignore_errors=True)
        version = exported.directory / VERSION
        version.mkdir(parents=True)
        shutil.copyfile(source, version / MODEL_FILE)
        for f in extra:  # external weights keep their file name: model.onnx refers to them by it
            shutil.copyfile(f, version / f.name)
        (exported.directory / "config.pbtxt").write_text(config)
    return [p[0] for p in plans]


def model_config(
    name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], max_batch_size: int,
    batch_delay_us: int | None = None,
) -> str:
    """Triton's config.pbtxt (ModelConfig in protobuf text format) for one ONNX segment."""
    lines = [f'name: "{_quote(name)}"', f'platform: "{PLATFORM}"', f"max_batch_size: {max_batch_size}"]
    for field, specs in (("input", inputs), ("output", outputs)):
        entries = []
        for t in specs:
            shape = t.shape[1:] if max_batch_size > 0 else t.shape
            dims = ", ".join(str(d) if isinstance(d, int) and d >= 0 else "-1" for d in shape)
            entries.append(f'  {{\n    name: "{_quote(t.name)}"\n    data_type: TYPE_{dtypes.to_oip(t.dtype)}\n'
                           f"    dims: [ {dims} ]\n  }}")
        lines.append(f"{field} [\n" + ",\n".join(entries) + "\n]")
    if batch_delay_us is not None:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {batch_delay_us}\n}}")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    """Escape a string for a double-quoted protobuf text-format literal."""
    return text_encoding.CEscape(text, as_utf8=True)


def _external_files(bundle: Bundle, model: Path) -> list[Path]:
    """The external-data files an ONNX model refers to, found inside the bundle beside the model."""
    import onnx

    locations = {e.value for t in _tensors(onnx.load(str(model), load_external_data=False).graph)
                 for e in t.external_data if e.key == "location"}
    for loc in locations:
        if Path(loc).name != loc:
            raise SplitpointError(f"{model}: external data {loc!r} is not a file beside the model; "
                                  "re-save it with its weights next to it")
    return [bundle.path(str(model.parent.relative_to(bundle.root) / loc)) for loc in sorted(locations)]


def _tensors(graph) -> Iterator:
    """Every TensorProto of a graph and its subgraphs (initializers and constant attributes)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)
