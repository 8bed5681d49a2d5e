"""An estimate of the memory a prefix needs on the edge: its weights plus its peak activations.

Weights are the initializers and Constant values the prefix reads, each counted
once. Activations are simulated in topological order: a tensor lives from the
node that makes it (or from the start, for a graph input) to its last reader
in the prefix, and to the end if it leaves the prefix. The peak of the live
bytes is an estimate: onnxruntime's arena, fusions and in-place kernels move
the real figure either way. Peak memory does not add up node by node, so a
ceiling on it cannot be part of the min-cut: the search filters cuts instead.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

import onnx
from onnx import helper

from partitioner.graph import GraphView


def _tensor_bytes(t: onnx.TensorProto) -> int:
    try:
        return math.prod(t.dims) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError):  # strings and other variable-size types
        return t.ByteSize()


class EdgeMemory:
    def __init__(self, view: GraphView, sizes: Mapping[str, int]):
        self.view = view
        self.sizes = sizes
        self.weights = {t.name: _tensor_bytes(t) for t in view.graph.initializer}
        for name, i in view.constants.items():  # in file order: a folded node's inputs come first
            node = view.graph.node[i]
            values = [a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
            # A folded node holds about what it reads (an Identity exactly; a DequantizeLinear a quarter).
            self.weights[name] = _tensor_bytes(values[0]) if values else sum(self.weights.get(t, 0) for t in node.input)

    def weight_bytes(self, prefix: Collection[int]) -> int:
        return sum(self.weights[t] for t in self.view.needs(prefix) if t in self.weights)

    def peak_activation_bytes(self, prefix: Collection[int], kept: Collection[str]) -> int:
        """Peak live bytes running ``prefix`` in order; ``kept`` tensors (sent, edge outputs) live to the end."""
        order = [i for i in self.view.order if i in prefix]
        last_use: dict[str, int] = {}
        for step, i in enumerate(order):
            for t in self.view.reads[i]:
                last_use[t] = step
        for t in kept:
            last_use[t] = len(order)
        live = {t: self.sizes.get(t, 0) for t in self.view.inputs if t in last_use}
        peak = sum(live.values())
        for step, i in enumerate(order):
            for t in self.view.graph.node[i].output:
                if t:
                    live[t] = self.sizes.get(t, 0)
            peak = max(peak, sum(live.values()))
            for t in [t for t in live if last_use.get(t, step) <= step]:
                del live[t]
        return peak

    def prefix_mb(self, prefix: Collection[int], kept: Collection[str]) -> float:
        """Weights plus peak activations of ``prefix``, in MB (10^6 bytes)."""
        return (self.weight_bytes(prefix) + self.peak_activation_bytes(prefix, kept)) / 1e6
