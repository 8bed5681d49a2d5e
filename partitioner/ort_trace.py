"""Per-node latency from ONNX Runtime's own profiler, mapped back to the model's nodes.

ONNX Runtime profiles the *optimized* graph (ORT_ENABLE_ALL, as deployed):
kernels are fused, renamed and re-laid-out, so a kernel name is rarely a node
name of the model. To map kernels back, the model is profiled as a copy whose
top-level nodes are named ``__sp<index>__`` and whose internal tensors are
named ``__sp<index>__<k>``; whatever onnxruntime derives its names from (the
node, as in ``fused __sp3__``, or the output tensor, as in the NCHWc
``__sp4__0_nchwc``), the token of an original node survives. The rule:

1. A kernel's *anchors* are the nodes whose tokens appear in its name or its
   outputs. A kernel with none (a layout reorder) takes the anchors of the
   nearest kernel it feeds, else of the nearest kernel feeding it.
2. Kernels sharing an anchor form one group. A node with no kernel of its own
   that sits right before a group in topological order and feeds only that
   group was fused into it (the Conv of a Conv+Relu kernel named after the
   Relu), and joins it; repeatedly, so whole fused chains join.
3. A group's time goes to its first node in topological order: a cut inside
   a fused chain then pays for the kernel on the side that starts it.
4. Nodes onnxruntime removed (constant-folded, eliminated, or fused into a
   kernel named after an earlier node) get 0.

Times are the median over the timed runs, after warm-up runs that are dropped.
Kernels inside If/Loop bodies are part of their parent node's kernel time and
are not counted twice.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from partitioner import onnxio
from partitioner.errors import PartitionError
from partitioner.graph import GraphView, outer_references, subgraphs

_TOKEN = re.compile(r"__sp(\d+)__")
_TOKEN_TENSOR = re.compile(r"__sp(\d+)__\d+")
_KERNEL_SUFFIX = "_kernel_time"


@dataclass(frozen=True)
class NodeTiming:
    """Where a node's time comes from: ``kernels`` it leads, or the node it was ``fused_into``."""

    ms: float
    kernels: tuple[str, ...] = ()
    fused_into: int | None = None
    removed: bool = False


@dataclass(frozen=True)
class Trace:
    nodes: dict[int, NodeTiming]
    unattributed_ms: float  # median per run of kernels no node could be found for


def session_options(threads: int) -> ort.SessionOptions:
    """The options deployment uses: all graph optimizations, ``threads`` intra-op threads, one inter-op.

    One difference: idle intra-op threads do not spin. Profiling alternates
    several sessions, and a pool spinning after its run would take the cores
    the next session's run needs (a lone session loses next to nothing).
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class Tracer:
    """An onnxruntime session with the node profiler on, over the tokenized copy of a model.

    Call ``run`` as often as wanted (interleaved with other timing, so both
    see the same machine), then ``finish`` for the per-node times.
    """

    def __init__(self, model: onnx.ModelProto, view: GraphView, threads: int):
        self.view = view
        self._tmp = tempfile.TemporaryDirectory(prefix="splitpoint-profile-")
        self._dir = Path(self._tmp.name)
        path = self._dir / "tokenized.onnx"
        onnxio.save_model(_tokenized(model, view), path)
        opts = session_options(threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(self._dir / "trace")
        opts.optimized_model_filepath = str(self._dir / "optimized.onnx")
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.onnx.data")
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own exception types
            self._tmp.cleanup()
            raise PartitionError(f"onnxruntime cannot load the model for profiling: {str(e).splitlines()[0]}") from None
        self._inputs = [i.name for i in self._session.get_inputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> None:
        self._session.run(None, {name: feeds[name] for name in self._inputs})

    def finish(self, warmup: int) -> Trace:
        """The per-node times of the runs after the first ``warmup``; the tracer is closed."""
        try:
            events = json.loads(Path(self._session.end_profiling()).read_text())
            optimized = onnx.load(self._dir / "optimized.onnx", load_external_data=False)
        finally:
            self._tmp.cleanup()
        return _attribute(self.view, optimized.graph, _kernel_times_per_run(events, warmup))


def _tokenized(model: onnx.ModelProto, view: GraphView) -> onnx.ModelProto:
    """A copy with token names for top-level nodes and the tensors only they use."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    g = copy.graph
    keep = set(view.inputs) | set(view.outputs) | view.initializers
    for node in g.node:
        for body in subgraphs(node):
            keep.update(outer_references(body))
    renamed: dict[str, str] = {}
    for i, node in enumerate(g.node):
        node.name = f"__sp{i}__"
        for k, out in enumerate(node.output):
            if out and out not in keep:
                renamed[out] = f"__sp{i}__{k}"
    for node in g.node:
        node.input[:] = [renamed.get(t, t) for t in node.input]
        node.output[:] = [renamed.get(t, t) for t in node.output]
    for vi in g.value_info:
        vi.name = renamed.get(vi.name, vi.name)
    return copy


def _kernel_times_per_run(events: list[dict], warmup: int) -> list[dict[str, float]]:
    """Kernel name -> milliseconds, one dict per timed run (warm-up runs dropped)."""
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    runs: list[dict[str, float]] = [defaultdict(float) for _ in windows]
    starts = [w[0] for w in windows]
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith(_KERNEL_SUFFIX):
            continue
        k = int(np.searchsorted(starts, e["ts"], side="right")) - 1
        if k >= 0 and e["ts"] <= windows[k][1]:
            runs[k][e["name"][: -len(_KERNEL_SUFFIX)]] += e["dur"] / 1e3
    return [dict(r) for r in runs[warmup:]]


def _attribute(view: GraphView, optimized: onnx.GraphProto, per_run: list[dict[str, float]]) -> Trace:
    position = {node: pos for pos, node in enumerate(view.order)}
    kernels = {n.name: n for n in optimized.node if n.name}
    anchors = {name: _anchors(n, position) for name, n in kernels.items()}
    _borrow_anchors(optimized, anchors)

    group = _UnionFind()
    for nodes in anchors.values():
        for a in nodes:
            group.union(min(nodes), a)
    folded = {int(m.group(1)) for t in optimized.initializer if (m := _TOKEN_TENSOR.fullmatch(t.name))}
    members: dict[int, set[int]] = defaultdict(set)
    for a in {a for nodes in anchors.values() for a in nodes}:
        members[group.find(a)].add(a)
    _absorb_fused_producers(view, position, members, folded)
    leader = {root: min(nodes, key=position.__getitem__) for root, nodes in members.items()}
    member_of = {n: root for root, nodes in members.items() for n in nodes}

    times: dict[int, list[float]] = defaultdict(lambda: [0.0] * len(per_run))
    unattributed = [0.0] * len(per_run)
    led: dict[int, set[str]] = defaultdict(set)
    for r, run in enumerate(per_run):
        for name, ms in run.items():
            if name not in kernels:
                continue  # a kernel inside an If/Loop body: its parent's time includes it
            if not anchors[name]:
                unattributed[r] += ms
                continue
            first = leader[member_of[next(iter(anchors[name]))]]
            times[first][r] += ms
            led[first].add(_kernel_label(kernels[name]))

    nodes: dict[int, NodeTiming] = {}
    for node in view.order:
        if node in times:
            nodes[node] = NodeTiming(statistics.median(times[node]), tuple(sorted(led[node])))
        elif node in member_of:
            nodes[node] = NodeTiming(0.0, fused_into=leader[member_of[node]])
        else:
            nodes[node] = NodeTiming(0.0, removed=True)
    return Trace(nodes, statistics.median(unattributed) if per_run else 0.0)


def _anchors(node: onnx.NodeProto, position: Mapping[int, int]) -> set[int]:
    found = {int(i) for text in [node.name, *node.output] for i in _TOKEN.findall(text)}
    return {i for i in found if i in position}


def _borrow_anchors(optimized: onnx.GraphProto, anchors: dict[str, set[int]]) -> None:
    """Kernels without anchors take those of the nearest kernel they feed, else that feeds them."""
    consumers: dict[str, list[str]] = defaultdict(list)
    producer: dict[str, str] = {}
    for n in optimized.node:
        for t in n.input:
            consumers[t].append(n.name)
        for t in n.output:
            producer[t] = n.name
    by_name = {n.name: n for n in optimized.node if n.name}

    def fed(k: str) -> list[str]:
        return [c for t in by_name[k].output for c in consumers[t]]

    def feeding(k: str) -> list[str]:
        return [producer[t] for t in by_name[k].input if t in producer]

    for name in [k for k, a in anchors.items() if not a]:
        anchors[name] = _nearest(name, fed, anchors) or _nearest(name, feeding, anchors)


def _nearest(start: str, step: Callable[[str], list[str]], anchors: Mapping[str, set[int]]) -> set[int]:
    frontier, seen = [start], {start}
    while frontier:
        nxt = [k for f in frontier for k in step(f) if k not in seen and k in anchors]
        seen.update(nxt)
        hits = set().union(*(anchors[k] for k in nxt)) if nxt else set()
        if hits:
            return hits
        frontier = nxt
    return set()


def _absorb_fused_producers(
    view: GraphView, position: Mapping[int, int], members: dict[int, set[int]], folded: set[int]
) -> None:
    """Rule 2: unanchored nodes right before a group that feed only it join the group."""
    member_of = {n: root for root, nodes in members.items() for n in nodes}
    outputs = set(view.outputs)
    for node in reversed(view.order):
        if node in member_of or node in folded:
            continue
        produced = [o for o in view.graph.node[node].output if o]
        users = {c for c in view.dag.successors(node)}
        roots = {member_of.get(c) for c in users}
        if not users or len(roots) != 1 or None in roots or outputs.intersection(produced):
            continue
        root = roots.pop()
        if position[node] + 1 == min(position[n] for n in members[root]):
            members[root].add(node)
            member_of[node] = root


def _kernel_label(node: onnx.NodeProto) -> str:
    return f"{node.domain}:{node.op_type}" if node.domain else node.op_type


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
