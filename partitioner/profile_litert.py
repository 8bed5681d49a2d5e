"""Per-operator latency of a .tflite model on LiteRT, from timed prefix models (LiteRT's Python API has no op profiler).

ai-edge-litert's ``Interpreter`` offers no per-operator timing to Python
(its op profiler is C++ only, behind the benchmark tool), and its default
XNNPACK delegate runs whole runs of operators as one node anyway. So the
model is timed the way a split runs it: the prefix ending after operator k
(every operator up to k in execution order, cut with ``partitioner.tflite``'s
surgery) is a model of its own, and operator k costs T(k) - T(k-1), with T(-1)
the cost of a call to a one-operator model. Medians over the runs, made
non-decreasing in k (a longer prefix cannot take less time; noise can say it
does), so no operator gets a negative time.

Models with more than ``MAX_PREFIXES`` operators are profiled per segment:
prefixes end at evenly spread operators, each segment's time goes to its
first operator and the others are ``fused_into`` it, as onnxruntime's fused
kernels are. All prefixes, the full model, the one-operator model and the
boundary probe (``partitioner.profile_boundary``) run in turn in every round,
under the same load.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from partitioner.profile import NodeProfile, Profile, assemble, node_key, with_boundary
from partitioner.profile_boundary import BoundaryProbe
from partitioner.profile_timing import Timed, gc_paused, litert_opener
from partitioner.tflite.flatbuffer import schema, serialize
from partitioner.tflite.format import TfliteFormat
from partitioner.tflite.segment import extract
from partitioner.tflite.source import TfliteSource
from partitioner.tflite.view import with_constants

MAX_PREFIXES = 48  # beyond that many operators, per segment


def profile_tflite(source: TfliteSource, threads: int, runs: int, warmup: int, log: Callable[[str], None]) -> Profile:
    from ai_edge_litert import __version__ as litert_version

    view = source.view
    order = view.order
    ends = _segment_ends(len(order))
    feeds = source.sample(0)
    opener = litert_opener(threads)
    log(f"profiling {warmup} warm-up + {runs} runs with LiteRT {litert_version}, {threads} thread(s): "
        f"{len(ends)} prefix models of {len(order)} operators, each timed")
    with tempfile.TemporaryDirectory(prefix="splitpoint-profile-") as tmp:
        prefixes = [Timed(opener(_write_prefix(source, order[: end + 1], Path(tmp) / f"prefix{k}.tflite")))
                    for k, end in enumerate(ends)]
        one_op = Path(tmp) / "one_op.tflite"
        one_op.write_bytes(serialize(_one_op_model()))
        empty = Timed(opener(one_op))
    full = Timed(opener(source.path))
    probe = BoundaryProbe(TfliteFormat(source), opener, log)
    with gc_paused():
        for k in range(warmup + runs):  # interleaved, so a busy spell on a shared machine hits all alike
            keep = k >= warmup
            full.run(feeds, keep)
            empty.run({"x": np.zeros(1, np.float32)}, keep)
            for prefix in prefixes:
                prefix.run(feeds, keep)
            probe.run(feeds, keep)
            if (k + 1) % 10 == 0 or k + 1 == warmup + runs:
                log(f"profiled {k + 1}/{warmup + runs} runs")
    overhead = statistics.median(empty.ms)
    cumulative = np.maximum.accumulate([overhead, *(statistics.median(p.ms) for p in prefixes)])
    nodes: dict[int, NodeProfile] = {}
    start = 0
    for end, ms in zip(ends, np.diff(cumulative)):
        first = order[start]
        for i in order[start : end + 1]:
            node = view.graph.node[i]
            if i == first:
                nodes[i] = NodeProfile(i, node.name, node.op_type, round(float(ms), 6), (node.op_type,))
            else:
                nodes[i] = NodeProfile(i, node.name, node.op_type, 0.0, fused_into=node_key(first, view.graph.node[first].name))
        start = end + 1
    backend = {"name": "litert", "version": litert_version, "threads": threads, "delegate": "default (XNNPACK)",
               "method": "prefix models" if len(ends) == len(order) else f"prefix models, {len(ends)} segments"}
    measured = assemble(source, backend, runs, warmup, statistics.median(full.ms), overhead, 0.0, nodes)
    return with_boundary(measured, probe)


def _segment_ends(count: int) -> list[int]:
    """Positions (in execution order) where prefixes end: every operator, or ``MAX_PREFIXES`` spread ones."""
    if count <= MAX_PREFIXES:
        return list(range(count))
    return sorted({round((k + 1) * count / MAX_PREFIXES) - 1 for k in range(MAX_PREFIXES)})


def _write_prefix(source: TfliteSource, ops: list[int], path: Path) -> Path:
    """The model running ``ops`` (and the weight decompression they need), outputting the last one's tensors."""
    view = source.view
    chosen = with_constants(view, ops)
    reads = set(view.needs(ops))
    inputs = [source.index(t) for t in view.inputs if t in reads]
    outputs = [source.index(t) for t in view.graph.node[ops[-1]].output if t]
    path.write_bytes(serialize(extract(source.model, source.keys, chosen, inputs, outputs)))
    return path


def _one_op_model() -> schema.ModelT:
    """A one-element RELU: what a call costs when it computes nothing."""
    tensors = []
    for name in ("x", "y"):
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name, [1], schema.TensorType.FLOAT32, 0
        tensors.append(t)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0], [1]
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.RELU
    code.version = 1
    graph = schema.SubGraphT()
    graph.tensors, graph.operators, graph.inputs, graph.outputs = tensors, [op], [0], [1]
    model = schema.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], [schema.BufferT()]
    return model

