"""The .tflite model being partitioned, loaded once with everything inspect and split share."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from partitioner.errors import PartitionError
from partitioner.golden import Tensors
from partitioner.graph import GraphView
from partitioner.shapes import concrete_input_shapes
from partitioner.source import GraphSource
from partitioner.tflite.flatbuffer import ints, numpy_name, read_model, schema, serialize, tensor_name, type_name
from partitioner.tflite.segment import extract
from partitioner.tflite.view import MAIN, graph_view, tensor_keys
from splitpoint.backends import load_session

BACKEND = "litert"


@dataclass
class TfliteSource(GraphSource):
    path: Path
    model: schema.ModelT
    keys: list[str]  # unique name of each main-subgraph tensor, by index
    view: GraphView
    input_shapes: dict[str, tuple[int, ...]]  # the shapes golden inputs and measurements use

    @classmethod
    def open(cls, path: str | Path, shapes: Mapping[str, Sequence[int]] | None, log: Callable[[str], None]) -> TfliteSource:
        path = Path(path)
        model = read_model(path)
        keys = tensor_keys(model.subgraphs[MAIN])
        _check_boundary(path, model.subgraphs[MAIN], keys)
        if model.signatureDefs and len(model.signatureDefs) > 1:
            log(f"{path.name}: {len(model.signatureDefs)} signatures; the main subgraph is cut, the segments have none")
        view = graph_view(model)
        return cls(path, model, keys, view, concrete_input_shapes(view.input_infos, shapes, log))

    @cached_property
    def _index(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self.keys)}

    def index(self, name: str) -> int:
        """The main-subgraph index of the tensor named ``name`` (a key)."""
        return self._index[name]

    def values(self, names: list[str], inputs: Tensors) -> Tensors:
        """The main-subgraph tensors ``names`` on ``inputs``, from one LiteRT run of the model with them as outputs."""
        if not names:
            return {}
        main = self.model.subgraphs[MAIN]
        outputs = list(dict.fromkeys([*ints(main.outputs), *map(self.index, names)]))
        exposed = extract(self.model, self.keys, range(len(main.operators)), ints(main.inputs), outputs)
        with tempfile.TemporaryDirectory(prefix="splitpoint-") as tmp:
            path = Path(tmp) / "exposed.tflite"
            path.write_bytes(serialize(exposed))
            session = load_session(path, backend=BACKEND)
            results = session.run({s.name: inputs[s.name] for s in session.inputs})
        return {n: results[n] for n in names}

    def golden_cases(self, count: int) -> list[tuple[Tensors, Tensors]]:
        """``count`` seeded inputs and the full model's outputs on them, from LiteRT."""
        session = load_session(self.path, backend=BACKEND)
        return [(inputs, session.run(inputs)) for inputs in map(self.sample, range(count))]


def _check_boundary(path: Path, main: schema.SubGraphT, keys: list[str]) -> None:
    """Inputs and outputs are named by tensor name in manifests and on the wire: they need good ones."""
    for role, indices in (("input", ints(main.inputs)), ("output", ints(main.outputs))):
        for i in indices:
            tensor = main.tensors[i]
            if keys[i] != tensor_name(tensor):
                raise PartitionError(
                    f"{path}: {role} tensor {i} has an empty or repeated name ({tensor_name(tensor)!r}); "
                    "splitpoint needs distinct names for a model's inputs and outputs"
                )
            if numpy_name(tensor.type) is None:
                raise PartitionError(
                    f"{path}: {role} {keys[i]!r} has TFLite type {type_name(tensor.type)}, which splitpoint cannot send"
                )
