"""Segment extraction: a standalone .tflite model running some of the main subgraph's operators.

The segment's main subgraph holds the chosen operators in their original
order (which is an execution order), every tensor they touch, and the given
inputs and outputs. Tensors are copied whole: shapes, shape signatures and
quantization parameters travel with them, so an int8 tensor crossing the cut
has the same scale and zero point on both sides. Tensors take their unique
names (``view.tensor_keys``), so the segments' inputs and outputs are named
as the manifest names them. Other subgraphs (control-flow bodies) are kept
whole, so the indices operators hold to them stay valid. Only the buffers
and operator codes still in use are kept, renumbered. Signature defs are
dropped: they describe the full model's inputs and outputs, not a segment's.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence

from partitioner.tflite.flatbuffer import has_data, ints, schema
from partitioner.tflite.view import MAIN


def extract(
    model: schema.ModelT, keys: Sequence[str], ops: Collection[int], inputs: Sequence[int], outputs: Sequence[int]
) -> schema.ModelT:
    """The model computing main-subgraph tensors ``outputs`` from ``inputs`` with operators ``ops``."""
    main = model.subgraphs[MAIN]
    chosen = [main.operators[i] for i in sorted(ops)]
    touched = [t for op in chosen for t in [*ints(op.inputs), *ints(op.outputs), *ints(op.intermediates)] if t >= 0]
    used = list(dict.fromkeys([*inputs, *touched, *outputs]))
    position = {old: new for new, old in enumerate(used)}
    subgraph = copy.copy(main)
    subgraph.tensors = [copy.copy(main.tensors[t]) for t in used]
    for tensor, t in zip(subgraph.tensors, used):
        tensor.name = keys[t]
    subgraph.operators = [_renumbered(op, position) for op in chosen]
    subgraph.inputs, subgraph.outputs = [position[t] for t in inputs], [position[t] for t in outputs]
    return _compacted(model, [subgraph, *model.subgraphs[MAIN + 1 :]])


def _renumbered(op: schema.OperatorT, position: dict[int, int]) -> schema.OperatorT:
    op = copy.copy(op)
    for field in ("inputs", "outputs", "intermediates"):
        if getattr(op, field) is not None:
            setattr(op, field, [position[t] if t >= 0 else t for t in ints(getattr(op, field))])
    return op


def _compacted(model: schema.ModelT, subgraphs: list[schema.SubGraphT]) -> schema.ModelT:
    """``model`` with ``subgraphs``, keeping only the buffers and operator codes they use."""
    buffers = [model.buffers[0]]
    buffer_index: dict[int, int] = {}

    def keep_buffer(old: int) -> int:
        if old not in buffer_index:
            buffer_index[old] = len(buffers)
            buffers.append(model.buffers[old])
        return buffer_index[old]

    codes: list[schema.OperatorCodeT] = []
    code_index: dict[int, int] = {}
    rebuilt = []
    for g in subgraphs:
        g = copy.copy(g)
        g.tensors = [copy.copy(t) for t in g.tensors or []]
        for t in g.tensors:
            t.buffer = keep_buffer(t.buffer) if has_data(model, t) else 0
        g.operators = [copy.copy(op) for op in g.operators or []]
        for op in g.operators:
            if op.opcodeIndex not in code_index:
                code_index[op.opcodeIndex] = len(codes)
                codes.append(model.operatorCodes[op.opcodeIndex])
            op.opcodeIndex = code_index[op.opcodeIndex]
        rebuilt.append(g)

    segment = copy.copy(model)
    segment.subgraphs, segment.operatorCodes, segment.signatureDefs = rebuilt, codes, None
    segment.metadata = [copy.copy(m) for m in model.metadata or []] or None
    for m in segment.metadata or []:
        m.buffer = keep_buffer(m.buffer)
    segment.metadataBuffer = [keep_buffer(b) for b in ints(model.metadataBuffer)] or None
    segment.buffers = buffers
    return segment
