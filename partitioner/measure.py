"""Element type, shape and byte size of tensors, as the golden inputs make them.

Shapes come from ONNX shape inference twice: once as declared (dynamic dims
stay symbolic, for manifests and segment signatures) and once with the inputs
fixed to the measuring shapes (for byte counts). What inference cannot pin
down is taken from one onnxruntime run of the model with those tensors
exposed as extra outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from partitioner import onnxio
from partitioner.errors import PartitionError
from partitioner.graph import GraphView
from splitpoint import dtypes
from splitpoint.bundle import Dim, TensorSpec
from splitpoint.errors import WireError

_SHAPE_RELEVANT_BYTES = 1024  # larger initializers are weights: inference needs their shapes, not values


@dataclass(frozen=True)
class TensorFacts:
    elem_type: int
    shape: tuple[Dim, ...]  # symbolic where inference knows it, else as measured
    nbytes: int


class TensorTable:
    """Facts and ONNX value infos (with symbolic dims) for the tensors of interest."""

    def __init__(self, facts: dict[str, TensorFacts], value_infos: dict[str, onnx.ValueInfoProto]):
        self._facts = facts
        self._value_infos = value_infos

    def spec(self, name: str) -> TensorSpec:
        f = self._facts[name]
        try:
            dtype = dtypes.from_onnx(f.elem_type)
        except WireError:
            type_name = onnx.TensorProto.DataType.Name(f.elem_type)
            raise PartitionError(f"tensor {name!r} has element type {type_name}, which splitpoint cannot send") from None
        return TensorSpec(name, dtype, f.shape, f.nbytes)

    def value_info(self, name: str) -> onnx.ValueInfoProto:
        if name in self._value_infos:
            return self._value_infos[name]
        return helper.make_tensor_value_info(name, self._facts[name].elem_type, None)


def measure(
    model: onnx.ModelProto,
    view: GraphView,
    names: Iterable[str],
    input_shapes: Mapping[str, tuple[int, ...]],
    computed: Mapping[str, np.ndarray],
    log: Callable[[str], None],
) -> TensorTable:
    """Facts for ``names`` (tensors of ``view``'s graph) on the first golden input.

    ``computed`` holds that input and any tensors already computed from it.
    """
    names = list(dict.fromkeys(names))
    symbolic = _inferred(model, None, log)
    concrete = _inferred(model, input_shapes, lambda _: None)  # a failure is already reported above
    declared = {vi.name: vi for vi in [*view.graph.input, *view.graph.output]}
    value_infos = {n: declared.get(n) or symbolic[n] for n in names if n in declared or _typed(symbolic.get(n))}

    facts: dict[str, TensorFacts] = {}
    unknown: list[str] = []
    for name in names:
        vi = value_infos.get(name)
        if name in computed:
            value = computed[name]
            facts[name] = _facts(vi, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
        elif _fully_known(known := concrete.get(name)):
            facts[name] = _facts(vi, known.type.tensor_type.elem_type, _dims(known))  # type: ignore[union-attr,arg-type]
        else:
            unknown.append(name)
    if unknown:
        log(f"measuring {len(unknown)} tensor size(s) with onnxruntime (shape inference cannot tell them)")
        for name, value in zip(unknown, _run_exposing(model, unknown, computed)):
            facts[name] = _facts(value_infos.get(name), helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
    return TensorTable(facts, value_infos)


def _facts(vi: onnx.ValueInfoProto | None, elem_type: int, shape: tuple[int, ...]) -> TensorFacts:
    """Facts of a tensor of ``shape``; its reported shape keeps ``vi``'s symbolic dims when known."""
    symbolic = _dims(vi) if vi is not None else None
    itemsize = helper.tensor_dtype_to_np_dtype(elem_type).itemsize
    return TensorFacts(elem_type, symbolic if symbolic is not None else tuple(shape), math.prod(shape) * itemsize)


def _typed(vi: onnx.ValueInfoProto | None) -> bool:
    return vi is not None and vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type != 0


def _dims(vi: onnx.ValueInfoProto) -> tuple[Dim, ...] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)


def _fully_known(vi: onnx.ValueInfoProto | None) -> bool:
    dims = _dims(vi) if _typed(vi) else None  # type: ignore[arg-type]
    return dims is not None and all(isinstance(d, int) for d in dims)


def _inferred(
    model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]] | None, log: Callable[[str], None]
) -> dict[str, onnx.ValueInfoProto]:
    """Value infos of every top-level tensor shape inference can type."""
    skeleton = _weightless(model, input_shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        log(f"static shape inference failed ({str(e).splitlines()[0]}); sizes come from onnxruntime")
        return {}
    g = inferred.graph
    return {vi.name: vi for vi in [*g.input, *g.value_info, *g.output] if _typed(vi)}


def _weightless(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]] | None) -> onnx.ModelProto:
    """A cheap copy for shape inference: large initializers become typed graph inputs.

    Shape-carrying tensors are small, so inference loses nothing, and the copy
    stays far below the 2 GB protobuf limit whatever the model's size.
    """
    g = model.graph
    inputs = [
        helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, input_shapes[vi.name])
        if input_shapes and vi.name in input_shapes
        else vi
        for vi in g.input
    ]
    declared = {vi.name for vi in g.input}
    small, weights = [], []
    for t in g.initializer:
        if t.ByteSize() <= _SHAPE_RELEVANT_BYTES:
            small.append(t)
        elif t.name not in declared:
            weights.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    graph = helper.make_graph(
        list(g.node), g.name, inputs + weights, list(g.output), small, value_info=list(g.value_info),
        sparse_initializer=list(g.sparse_initializer),
    )
    skeleton = helper.make_model(graph, opset_imports=list(model.opset_import), functions=list(model.functions))
    skeleton.ir_version = model.ir_version
    return skeleton


def _run_exposing(model: onnx.ModelProto, names: list[str], computed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run a copy of ``model`` with ``names`` added to its outputs."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    outputs = {vi.name for vi in exposed.graph.output}
    exposed.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in outputs)
    sess = onnxio.session(exposed, "the model with intermediate tensors exposed for measuring")
    feed = {i.name: computed[i.name] for i in sess.get_inputs()}
    return [np.asarray(v) for v in sess.run(names, feed)]
