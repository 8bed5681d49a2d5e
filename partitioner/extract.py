"""Segment extraction: a standalone model made of some of a graph's nodes.

The segment keeps the original's opsets, IR version and local functions, the
initializers and Constant (or folded) nodes its nodes read (also from inside
their bodies), and the value infos of the tensors it computes internally.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import onnx
from onnx import helper

from partitioner.graph import GraphView


def extract_segment(
    model: onnx.ModelProto,
    view: GraphView,
    nodes: Collection[int],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    name: str,
) -> onnx.ModelProto:
    """The model computing ``outputs`` from ``inputs`` with the compute nodes ``nodes``."""
    g = view.graph
    compute = [i for i in view.order if i in nodes]
    needed = set(view.needs(compute, [vi.name for vi in outputs]))
    constants = view.constant_nodes(needed)
    needed.update(t for i in constants for t in g.node[i].input)  # the initializers folded nodes read
    boundary = {vi.name for vi in [*inputs, *outputs]}
    internal = {o for i in compute for o in g.node[i].output} | needed
    graph = helper.make_graph(
        [g.node[i] for i in constants + compute],
        name,
        list(inputs),
        list(outputs),
        initializer=[t for t in g.initializer if t.name in needed],
        sparse_initializer=[t for t in g.sparse_initializer if t.values.name in needed],
        value_info=[vi for vi in g.value_info if vi.name in internal and vi.name not in boundary],
    )
    segment = helper.make_model(
        graph,
        opset_imports=list(model.opset_import),
        functions=list(model.functions),
        producer_name="splitpoint",
        doc_string=f"segment {name} of {model.graph.name}",
    )
    segment.ir_version = model.ir_version
    return segment
