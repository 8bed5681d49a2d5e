"""A read-only view of a model's top-level graph: who produces and who consumes each tensor.

Cuts are made between top-level nodes only. A node that holds subgraphs
(If/Loop/Scan) consumes, besides its inputs, every outer-scope tensor its
bodies reference, so those tensors must reach whichever side runs the node.
Constant nodes are treated like initializers: each side keeps its own copy. So
are the outputs of cheap operators computing only from constants (an Identity
of a weight, as torch's legacy exporter writes for shared LayerNorm weights; a
DequantizeLinear of int8 weights): otherwise a cut could send a weight the
prefix merely passed on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import networkx as nx
import onnx

from partitioner.errors import PartitionError


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _defined_in(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    names |= {t.values.name for t in graph.sparse_initializer}
    return names | {o for n in graph.node for o in n.output if o}


def outer_references(graph: onnx.GraphProto) -> list[str]:
    """Names a subgraph (or its nested subgraphs) reads from enclosing scopes, in order of use."""
    defined = _defined_in(graph)
    refs: dict[str, None] = {}
    for node in graph.node:
        for name in node_reads(node):
            if name not in defined:
                refs[name] = None
    return list(refs)


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor a node needs: its inputs and its bodies' outer-scope references."""
    reads = dict.fromkeys(i for i in node.input if i)
    for g in subgraphs(node):
        reads.update(dict.fromkeys(outer_references(g)))
    return list(reads)


def _names_inside(graph: onnx.GraphProto) -> Iterator[str]:
    yield from _defined_in(graph)
    for node in graph.node:
        for g in subgraphs(node):
            yield from _names_inside(g)


def is_constant(node: onnx.NodeProto) -> bool:
    return node.op_type == "Constant" and node.domain in ("", "ai.onnx")


# Operators folded into constants when every input is one: data movement, casts and weight
# dequantisation, cheap enough for each side to run its own copy. Nothing random.
FOLDABLE = frozenset({"Identity", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat",
                      "DequantizeLinear"})


def folds_to_constant(node: onnx.NodeProto, constants: set[str]) -> bool:
    """True for a FOLDABLE node reading constants only (``constants``: initializers and constants so far)."""
    inputs = [t for t in node.input if t]
    return (node.op_type in FOLDABLE and node.domain in ("", "ai.onnx")
            and bool(inputs) and all(t in constants for t in inputs))


def describe(node: onnx.NodeProto) -> str:
    label = node.name or (node.output[0] if node.output else "?")
    return f"{node.op_type} node {label!r}"


@dataclass
class GraphView:
    """Producers, consumers and a topological order of the compute nodes of ``graph``.

    Node ids are positions in ``graph.node``. ``order`` lists the compute nodes
    (everything but constants: Constant nodes and the nodes folded into constants)
    topologically, following file order where free.
    """

    graph: onnx.GraphProto
    inputs: list[str]
    outputs: list[str]
    initializers: set[str]
    constants: dict[str, int]  # tensor -> Constant (or folded) node producing it
    producer: dict[str, int]  # tensor -> compute node producing it
    reads: dict[int, list[str]]  # compute node -> tensors it needs (incl. outer-scope references)
    order: list[int]
    dag: nx.DiGraph
    inside: dict[str, int]  # tensor defined only in a body -> the top-level node holding the body

    @classmethod
    def of(cls, graph: onnx.GraphProto) -> GraphView:
        initializers = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
        constants: dict[str, int] = {}
        producer: dict[str, int] = {}
        reads: dict[int, list[str]] = {}
        inside: dict[str, int] = {}
        kept = set(initializers)
        for i, node in enumerate(graph.node):  # ONNX files list nodes in topological order
            outputs = [o for o in node.output if o]
            if is_constant(node) or folds_to_constant(node, kept):
                constants.update(dict.fromkeys(outputs, i))
                kept.update(outputs)
                continue
            producer.update(dict.fromkeys(outputs, i))
            reads[i] = node_reads(node)
            for g in subgraphs(node):
                for name in _names_inside(g):
                    inside.setdefault(name, i)
        dag = nx.DiGraph()
        dag.add_nodes_from(reads)
        dag.add_edges_from((producer[t], i) for i, names in reads.items() for t in names if t in producer)
        if not nx.is_directed_acyclic_graph(dag):
            cycle = nx.find_cycle(dag)
            raise PartitionError(f"the graph has a cycle through {describe(graph.node[cycle[0][0]])}")
        order = list(nx.lexicographical_topological_sort(dag))
        top = set(producer) | set(constants) | initializers | {v.name for v in graph.input}
        return cls(
            graph=graph,
            inputs=[v.name for v in graph.input if v.name not in initializers],
            outputs=[v.name for v in graph.output],
            initializers=initializers,
            constants=constants,
            producer=producer,
            reads=reads,
            order=order,
            dag=dag,
            inside={name: i for name, i in inside.items() if name not in top},
        )

    @property
    def input_infos(self) -> list[onnx.ValueInfoProto]:
        return [vi for vi in self.graph.input if vi.name in self.inputs]

    @property
    def tensor_names(self) -> list[str]:
        """Names a cut may use: graph inputs and compute-node outputs."""
        return self.inputs + list(self.producer)

    def is_kept_constant(self, name: str) -> bool:
        """True for tensors each side keeps rather than receives (initializers, Constant and folded outputs)."""
        return name in self.initializers or name in self.constants

    def constant_nodes(self, names: Iterable[str]) -> list[int]:
        """The Constant and folded nodes computing ``names`` (and the constants they read), in file order."""
        todo = [t for t in names if t in self.constants]
        found: set[int] = set()
        while todo:
            i = self.constants[todo.pop()]
            if i not in found:
                found.add(i)
                todo += [t for t in self.graph.node[i].input if t in self.constants]
        return sorted(found)

    def ancestors(self, names: Iterable[str]) -> set[int]:
        """The compute nodes needed to compute ``names`` from the graph inputs."""
        todo = [self.producer[n] for n in names if n in self.producer]
        seen = set(todo)
        while todo:
            for p in self.dag.predecessors(todo.pop()):
                if p not in seen:
                    seen.add(p)
                    todo.append(p)
        return seen

    def needs(self, nodes: Iterable[int], outputs: Iterable[str] = ()) -> list[str]:
        """Tensors ``nodes`` read (plus ``outputs``) that they do not produce, in order of first use."""
        wanted = set(nodes)
        nodes = [i for i in self.order if i in wanted]
        produced = {o for i in nodes for o in self.graph.node[i].output}
        needed = dict.fromkeys(t for i in nodes for t in self.reads[i])
        needed.update(dict.fromkeys(outputs))
        return [t for t in needed if t not in produced]
