"""The model being partitioned, loaded once with everything inspect and split share."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from partitioner import onnxio
from partitioner.golden import Tensors, sample_inputs
from partitioner.graph import GraphView
from partitioner.measure import _run_exposing
from partitioner.shapes import concrete_input_shapes


class GraphSource:
    """What every format's source shares: golden inputs and node counts from its graph view."""

    view: GraphView
    input_shapes: dict[str, tuple[int, ...]]  # the shapes golden inputs and measurements use

    def sample(self, case: int) -> Tensors:
        return sample_inputs(self.view.input_infos, self.input_shapes, case)

    @property
    def compute_nodes(self) -> int:
        return len(self.view.order)


@dataclass
class Source(GraphSource):
    path: Path
    model: onnx.ModelProto
    view: GraphView
    input_shapes: dict[str, tuple[int, ...]]  # the shapes golden inputs and measurements use

    @classmethod
    def open(cls, path: str | Path, shapes: Mapping[str, Sequence[int]] | None, log: Callable[[str], None]) -> Source:
        path = Path(path)
        model = onnxio.load_model(path)
        view = GraphView.of(model.graph)
        return cls(path, model, view, concrete_input_shapes(view.input_infos, shapes, log))

    def values(self, names: list[str], inputs: Tensors) -> Tensors:
        """The tensors ``names`` on ``inputs``, from one onnxruntime run of the model with them exposed."""
        return dict(zip(names, _run_exposing(self.model, names, inputs)))
