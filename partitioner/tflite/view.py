"""The main subgraph of a TFLite model as a GraphView, so every cut means what it means for ONNX.

The cut logic (``partitioner.cuts``) reads a GraphView: which node produces
and which nodes read each named tensor, in topological order. A TFLite
subgraph has the same structure with tensors indexed by position, so it is
mirrored as an ONNX graph of opaque nodes (op_type is the TFLite operator
name; nothing is ever run) over unique tensor names, and viewed with
``GraphView.of``. Tensors no operator computes and no graph input provides
(constants, variables) become initializers: each side keeps its own copy.
Weight decompression (DEQUANTIZE of float16 or int8 weights, DENSIFY of
sparse ones) computes constants from constants, so it is mirrored as ONNX
Constant nodes: each side runs its own instead of receiving the weights, and
it does not count as a node of either side. Operators that run other subgraphs (WHILE, IF, ...) carry the mirrored
bodies as graph attributes, so a cut naming a tensor inside a body is
refused the way a cut inside an ONNX Loop is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper

from partitioner.graph import GraphView
from partitioner.tflite.flatbuffer import body_subgraphs, has_data, ints, numpy_name, op_name, schema, tensor_name

MAIN = 0  # the subgraph the interpreter runs; the only one cut
DECOMPRESSION = {"DEQUANTIZE", "DENSIFY"}


def tensor_keys(subgraph: schema.SubGraphT) -> list[str]:
    """A unique name per tensor: its own, or ``name#index`` where it is empty or repeated."""
    names = [tensor_name(t) for t in subgraph.tensors or []]
    counts = Counter(names)
    return [n if n and counts[n] == 1 else f"{n or 'tensor'}#{i}" for i, n in enumerate(names)]


def graph_view(model: schema.ModelT) -> GraphView:
    return GraphView.of(_mirror(model, MAIN, frozenset()))


def with_constants(view: GraphView, ops: Iterable[int]) -> set[int]:
    """``ops`` and the weight decompression operators computing the constants they read."""
    chosen = set(ops)
    return chosen | set(view.constant_nodes(t for i in chosen for t in view.graph.node[i].input))


def _mirror(model: schema.ModelT, index: int, enclosing: frozenset[int]) -> onnx.GraphProto:
    g = model.subgraphs[index]
    keys = tensor_keys(g)
    produced = {t for op in g.operators or [] for t in ints(op.outputs)}
    constant = {i for i, t in enumerate(g.tensors or []) if has_data(model, t)}
    nodes = []
    for op in g.operators or []:  # in execution order, so a constant's producer comes first
        inputs = [t for t in ints(op.inputs) if t >= 0]  # -1: an optional input left out
        name = op_name(model, op)
        if name in DECOMPRESSION and constant.issuperset(inputs):
            constant.update(ints(op.outputs))
            name = "Constant"
        node = helper.make_node(name, [keys[t] for t in inputs], [keys[t] for t in ints(op.outputs)])
        for body in body_subgraphs(op):
            if body not in enclosing | {index} and 0 <= body < len(model.subgraphs):
                node.attribute.append(helper.make_attribute(f"subgraph_{body}", _mirror(model, body, enclosing | {index})))
        nodes.append(node)
    inputs = ints(g.inputs)
    return helper.make_graph(
        nodes,
        f"subgraph_{index}",
        [_value_info(keys[i], g.tensors[i]) for i in inputs],
        [onnx.ValueInfoProto(name=keys[i]) for i in ints(g.outputs)],
        initializer=[_initializer(keys[i], g.tensors[i]) for i in range(len(keys)) if i not in produced and i not in inputs],
    )


def _initializer(key: str, tensor: schema.TensorT) -> onnx.TensorProto:
    """A constant's type and shape without its values: enough for the edge memory estimate."""
    name = numpy_name(tensor.type)
    elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(name)) if name else onnx.TensorProto.UNDEFINED
    return onnx.TensorProto(name=key, dims=ints(tensor.shape), data_type=elem_type)


def _value_info(key: str, tensor: schema.TensorT) -> onnx.ValueInfoProto:
    """Element type and shape, with the dims that are -1 in the shape signature left unknown."""
    name = numpy_name(tensor.type)
    elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(name)) if name else onnx.TensorProto.UNDEFINED
    return helper.make_tensor_value_info(key, elem_type, symbolic_shape(tensor))


def symbolic_shape(tensor: schema.TensorT) -> list[int | None]:
    shape, signature = ints(tensor.shape), ints(tensor.shapeSignature)
    return [d if d >= 0 else None for d in (signature if len(signature) == len(shape) else shape)]
