"""Model formats: what ``split`` and ``inspect`` do differently for ONNX and TFLite, behind one small interface.

``partitioner.bundler.split`` and ``partitioner.candidates.inspect`` run one
flow for every format. A format opens the model (its ``source``: path,
GraphView, golden input shapes, sample inputs) and provides the four steps
that depend on the file format: the golden cases, the tensor measurements,
writing a segment file and saving the full model into the bundle. ONNX is
here; TFLite is ``partitioner.tflite.format``, imported only for .tflite files.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from partitioner import extract, onnxio
from partitioner.cuts import Cut
from partitioner.errors import PartitionError
from partitioner.golden import Tensors
from partitioner.graph import GraphView
from partitioner.measure import TensorTable, measure
from partitioner.source import Source
from partitioner.tflite import is_tflite
from splitpoint.errors import first_line

Log = Callable[[str], None]


class ModelSource(Protocol):
    """The loaded model as the shared flow reads it (``partitioner.source.Source`` and ``TfliteSource``)."""

    path: Path
    view: GraphView
    input_shapes: dict[str, tuple[int, ...]]

    def sample(self, case: int) -> Tensors: ...

    @property
    def compute_nodes(self) -> int: ...

    def values(self, names: list[str], inputs: Tensors) -> Tensors:
        """The tensors ``names`` (computed by the model) on ``inputs``, from one run of the model's own engine."""
        ...


class ModelFormat(Protocol):
    name: ClassVar[str]  # the format in messages
    model_file: ClassVar[str]  # the full model's file in the bundle
    suffix: ClassVar[str]  # of segment files; load_session picks the engine by it
    engine_note: ClassVar[str]  # ends log lines about running the model, naming an engine that is not the default
    node_word: ClassVar[str]  # what the format calls a compute node, in logs
    source: ModelSource

    @classmethod
    def open(cls, path: str | Path, shapes: Mapping[str, Sequence[int]] | None, log: Log) -> ModelFormat: ...

    @property
    def opset(self) -> int:
        """The manifest's opset: the ONNX default-domain opset, the TFLite schema version."""
        ...

    def golden_cases(self, count: int) -> list[tuple[Tensors, Tensors]]:
        """``count`` seeded inputs and the full model's outputs on them."""
        ...

    def measure(self, names: Iterable[str], computed: Mapping[str, np.ndarray], log: Log) -> TensorTable:
        """Facts for ``names``; ``computed`` holds the first golden input (and outputs, when known)."""
        ...

    def write_segment(
        self, path: Path, split_id: str, side: str, nodes: Collection[int], inputs: Sequence[str], outputs: Sequence[str],
        table: TensorTable,
    ) -> None:
        """Write to ``path`` the ``side`` segment computing ``outputs`` from ``inputs`` with compute nodes ``nodes``."""
        ...

    def save_model(self, path: Path) -> list[Path]:
        """Write the full model to ``path``; the files written, model first (they make the model's sha256)."""
        ...


def format_of(model: str | Path) -> type[ModelFormat]:
    """The format of the model file ``model``, told by its suffix or content; nothing is loaded yet."""
    if is_tflite(model):
        from partitioner.tflite.format import TfliteFormat  # needs LiteRT's schema: only for .tflite files

        return TfliteFormat
    return OnnxFormat


def open_model(model: str | Path, shapes: Mapping[str, Sequence[int]] | None, log: Log) -> ModelFormat:
    return format_of(model).open(model, shapes, log)


def format_for(source: ModelSource) -> ModelFormat:
    """The format of a model already loaded."""
    if isinstance(source, Source):
        return OnnxFormat(source)
    from partitioner.tflite.format import TfliteFormat

    return TfliteFormat(source)  # type: ignore[arg-type]


def write_segments(fmt: ModelFormat, table: TensorTable, cut: Cut, split_id: str, root: Path) -> tuple[str, str]:
    """Write the edge and cloud segments of ``cut`` under ``root``; their paths relative to it.

    The edge computes what is sent plus the graph outputs the prefix computes;
    the cloud takes what is sent and computes the other outputs.
    """
    view = fmt.source.view
    prefix_reads = set(view.needs(cut.prefix))
    edge_inputs = [t for t in view.inputs if t in prefix_reads]
    edge_outputs = [t for t in cut.sent if t in view.producer] + [o for o in cut.edge_outputs if o not in cut.sent]
    cloud_outputs = [o for o in view.outputs if o not in cut.edge_outputs]
    edge_file, cloud_file = f"edge/{split_id}{fmt.suffix}", f"cloud/{split_id}{fmt.suffix}"
    for rel, nodes, inputs, outputs in (
        (edge_file, cut.prefix, edge_inputs, edge_outputs),
        (cloud_file, cut.suffix, cut.sent, cloud_outputs),
    ):
        side = rel.split("/")[0]
        (root / side).mkdir(exist_ok=True)
        fmt.write_segment(root / rel, split_id, side, nodes, inputs, outputs, table)
    return edge_file, cloud_file


@dataclass
class OnnxFormat:
    """ONNX models: segments extracted as ONNX graphs, checked by onnx, run in onnxruntime."""

    name: ClassVar[str] = "ONNX"
    model_file: ClassVar[str] = "model.onnx"
    suffix: ClassVar[str] = ".onnx"
    engine_note: ClassVar[str] = ""
    node_word: ClassVar[str] = "nodes"
    source: Source

    @classmethod
    def open(cls, path: str | Path, shapes: Mapping[str, Sequence[int]] | None, log: Log) -> OnnxFormat:
        return cls(Source.open(path, shapes, log))

    @property
    def opset(self) -> int:
        return next((o.version for o in self.source.model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def golden_cases(self, count: int) -> list[tuple[Tensors, Tensors]]:
        source = self.source
        sess = onnxio.session(source.model, str(source.path))
        names = [o.name for o in sess.get_outputs()]
        cases = []
        for k in range(count):
            inputs = source.sample(k)
            try:
                outputs = sess.run(names, inputs)
            except Exception as e:  # onnxruntime's own exception types
                raise PartitionError(f"{source.path} fails in onnxruntime on golden input {k}: {first_line(e)}") from None
            cases.append((inputs, {n: np.asarray(v) for n, v in zip(names, outputs)}))
        return cases

    def measure(self, names: Iterable[str], computed: Mapping[str, np.ndarray], log: Log) -> TensorTable:
        source = self.source
        return measure(source.model, source.view, names, source.input_shapes, computed, log)

    def write_segment(
        self, path: Path, split_id: str, side: str, nodes: Collection[int], inputs: Sequence[str], outputs: Sequence[str],
        table: TensorTable,
    ) -> None:
        boundary = [[table.value_info(t) for t in names] for names in (inputs, outputs)]
        segment = extract.extract_segment(self.source.model, self.source.view, nodes, *boundary, f"{split_id}.{side}")
        onnxio.save_model(segment, path)
        onnxio.check_model_file(path, f"the {side} segment of split {split_id!r}")

    def save_model(self, path: Path) -> list[Path]:
        return onnxio.save_model(self.source.model, path)
