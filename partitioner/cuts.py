"""Cuts: what a set of named tensors splits off, what must cross, and which cuts exist.

The prefix of a cut is every node needed to compute its tensors from the graph
inputs; the suffix is the rest. Everything the suffix reads that the prefix or a
graph input provides is sent, once. A cut is valid when the named tensors cover
all of the prefix's part of that.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from partitioner.errors import PartitionError
from partitioner.graph import GraphView, describe


@dataclass(frozen=True)
class Cut:
    named: tuple[str, ...]
    prefix: frozenset[int]
    suffix: frozenset[int]
    sent: tuple[str, ...]  # named tensors first, in the order given
    edge_outputs: tuple[str, ...]  # graph outputs the prefix computes
    unnamed: tuple[str, ...]  # prefix tensors the suffix needs but the cut does not name
    added_inputs: tuple[str, ...]  # graph inputs the suffix reads directly, sent without being named


def partition(view: GraphView, names: Sequence[str]) -> Cut:
    """The prefix, suffix and crossing tensors of cutting at ``names`` (no validation)."""
    prefix = view.ancestors(names)
    suffix = set(view.order) - prefix
    edge_outputs = [o for o in view.outputs if view.producer.get(o) in prefix]
    suffix_outputs = [o for o in view.outputs if o not in edge_outputs]
    needed = [t for t in view.needs(suffix, suffix_outputs) if not view.is_kept_constant(t)]
    crossing = [t for t in needed if view.producer.get(t) in prefix or t in view.inputs]
    named = set(names)
    return Cut(
        named=tuple(names),
        prefix=frozenset(prefix),
        suffix=frozenset(suffix),
        sent=tuple([n for n in names if n in crossing] + [t for t in crossing if t not in named]),
        edge_outputs=tuple(edge_outputs),
        unnamed=tuple(t for t in crossing if t not in named and t in view.producer),
        added_inputs=tuple(t for t in crossing if t not in named and t in view.inputs),
    )


def resolve_cut(view: GraphView, names: Sequence[str]) -> Cut:
    """The cut at ``names``, or a PartitionError saying why it is not one."""
    names = list(dict.fromkeys(names))
    if not names:
        raise PartitionError("empty cut: name at least one tensor")
    for name in names:
        _check_name(view, name)
    cut = partition(view, names)
    at = ",".join(names)
    if problem := _trivial(view, cut):
        raise PartitionError(f"cut {at} {problem}")
    if cut.unnamed:
        missing = ", ".join(map(repr, cut.unnamed))
        complete = ",".join(names + list(cut.unnamed))
        raise PartitionError(
            f"cut {at} does not separate the graph: the cloud side also needs {missing} "
            f"from the edge side; use --at {complete}"
        )
    return cut


def _trivial(view: GraphView, cut: Cut) -> str | None:
    """Why the cut leaves one side with nothing to do, if it does."""
    if not cut.edge_outputs and not any(t in view.producer for t in cut.sent):
        return "is at the graph inputs, so nothing runs on the edge; use split 'cloud'"
    if not cut.suffix or set(cut.edge_outputs) == set(view.outputs):
        return "leaves nothing for the cloud to compute; use split 'local'"
    return None


def _check_name(view: GraphView, name: str) -> None:
    if name in view.producer or name in view.inputs:
        return
    if view.is_kept_constant(name):
        raise PartitionError(f"tensor {name!r} is a constant; each side keeps its own copy, so a cut cannot send it")
    if name in view.inside:
        node = view.graph.node[view.inside[name]]
        raise PartitionError(
            f"tensor {name!r} cannot be a cut: cut inside the body of {describe(node)}; "
            f"cut at its outputs ({', '.join(o for o in node.output if o)}) or before it"
        )
    close = difflib.get_close_matches(name, view.tensor_names, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise PartitionError(f"no tensor named {name!r} in the model{hint}")


@dataclass(frozen=True)
class CandidateCut:
    sent: tuple[str, ...]  # valid as a cut: resolve_cut(view, sent) sends exactly these
    prefix_nodes: int


def candidate_cuts(view: GraphView) -> list[CandidateCut]:
    """The distinct valid cuts met walking the topological order, by prefix size.

    After the first i nodes, the crossing set is what those nodes (or the graph
    inputs) produce and later nodes read. Under the cut semantics the prefix is
    only the nodes feeding that set: those with a descendant at position >= i.
    The others (dead ends, e.g. branches ending in a graph output) join the
    suffix, so what they read from the prefix or the inputs is sent as well.
    One sweep computes every crossing set, instead of one ``partition`` each.
    """
    order = view.order
    position = {node: pos for pos, node in enumerate(order)}
    reach: dict[int, int] = {}  # node -> the furthest position it feeds, directly or not (its own if none)
    for node in reversed(order):
        reach[node] = max([position[node], *(reach[s] for s in view.dag.successors(node))])
    dead_after: dict[int, list[int]] = defaultdict(list)  # i -> nodes that feed nothing from position i on
    for node in order:
        dead_after[reach[node] + 1].append(node)
    last_read: dict[str, int] = {}
    for node in order:
        for t in view.reads[node]:
            last_read[t] = position[node]
    passthrough = [o for o in view.outputs if o in view.inputs]  # the suffix must output them, so receives them

    def from_prefix(t: str, i: int) -> bool:
        """Whether ``t`` is a graph input or produced by the prefix after ``i`` nodes."""
        p = view.producer.get(t)
        return t in view.inputs or (p is not None and position[p] < i <= reach[p])

    live = [t for t in view.inputs if t in last_read]
    dead: list[int] = []
    seen: set[frozenset[str]] = set()
    cuts: list[CandidateCut] = []
    for i, node in enumerate(order[:-1], start=1):
        live += [o for o in view.graph.node[node].output if last_read.get(o, -1) >= i]
        live = [t for t in live if last_read[t] >= i]
        dead += dead_after[i]
        extra = [t for j in dead for t in view.reads[j] if from_prefix(t, i)]
        sent = tuple(dict.fromkeys(live + extra + passthrough))
        prefix_nodes = i - len(dead)
        computes_an_output = any(not from_prefix(o, i) or o in view.inputs for o in view.outputs)
        if prefix_nodes and computes_an_output and frozenset(sent) not in seen:
            seen.add(frozenset(sent))
            cuts.append(CandidateCut(sent, prefix_nodes))
    return sorted(cuts, key=lambda c: c.prefix_nodes)
