"""Property: on random DAGs the min-cut answer costs what the best of every valid prefix set costs.

The DAGs (onnx.helper) have multi-reader tensors, skip connections, initializers,
Constant nodes and If nodes whose branches read outer-scope tensors; node times,
tensor sizes and codec times are random, and a few tensors cannot be sent. The
brute force scores every downward-closed node set through ``CostModel.cost``,
which cuts with ``cuts.partition``: the search agrees with the bundle's semantics.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from partitioner.costmodel import CostModel
from partitioner.cuts import candidate_cuts
from partitioner.errors import PartitionError
from partitioner.graph import GraphView
from partitioner.memory import EdgeMemory
from partitioner.objectives import PowerProfile, cloud_compute, edge_energy, latency
from partitioner.profile import NodeProfile, Profile
from partitioner.search import Constraints, best_split, pareto
from partitioner.source import Source
from partitioner.transfer import TensorTransfer, Transfers
from splitpoint.cost import Link

INFO = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3])  # noqa: E731


@st.composite
def random_dags(draw: st.DrawFn) -> onnx.ModelProto:
    tensors = [f"in{i}" for i in range(draw(st.integers(1, 2)))]
    inputs = list(tensors)
    nodes: list[onnx.NodeProto] = []
    read: set[str] = set()
    inits = [numpy_helper.from_array(np.ones((2, 3), np.float32), "w")]
    for k in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["Add", "Relu", "Mul", "AddW", "AddConst", "If"]))
        a = draw(st.sampled_from(tensors))
        out = f"t{k}"
        if op in ("Add", "Mul"):
            args = [a, draw(st.sampled_from(tensors))]
            nodes.append(helper.make_node(op, args, [out], name=f"n{k}"))
        elif op == "Relu":
            args = [a]
            nodes.append(helper.make_node(op, args, [out], name=f"n{k}"))
        elif op == "AddW":
            args = [a]
            nodes.append(helper.make_node("Add", [a, "w"], [out], name=f"n{k}"))
        elif op == "AddConst":
            args = [a]
            c = numpy_helper.from_array(np.full((2, 3), 2.0, np.float32), f"c{k}.value")
            nodes.append(helper.make_node("Constant", [], [f"c{k}"], name=f"const{k}", value=c))
            nodes.append(helper.make_node("Add", [a, f"c{k}"], [out], name=f"n{k}"))
        else:  # If: the branches read outer-scope tensors only
            b = draw(st.sampled_from(tensors))
            args = [a, b]
            flag = numpy_helper.from_array(np.array(True), f"flag{k}.value")
            nodes.append(helper.make_node("Constant", [], [f"flag{k}"], name=f"flag{k}", value=flag))
            then = helper.make_graph([helper.make_node("Relu", [a], [f"then{k}"])], "then", [], [INFO(f"then{k}")])
            other = helper.make_graph([helper.make_node("Identity", [b], [f"else{k}"])], "else", [], [INFO(f"else{k}")])
            nodes.append(helper.make_node("If", [f"flag{k}"], [out], name=f"n{k}", then_branch=then, else_branch=other))
        read.update(args)
        tensors.append(out)
    computed = tensors[len(inputs):]
    extra = draw(st.sets(st.sampled_from(computed), max_size=2))
    outputs = [t for t in computed if t not in read or t in extra]
    graph = helper.make_graph(nodes, "dag", [INFO(i) for i in inputs], [INFO(o) for o in outputs], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def synthetic_profile(view: GraphView, rng: np.random.Generator, threads: int) -> Profile:
    nodes = {i: NodeProfile(i, view.graph.node[i].name, view.graph.node[i].op_type, float(rng.uniform(0, 5)))
             for i in view.order}
    total = sum(n.ms for n in nodes.values())
    return Profile("dag.onnx", "0" * 64, {"name": "onnxruntime", "version": "x", "threads": threads}, {}, {}, 1, 0, "",
                   end_to_end_ms=total * rng.uniform(0.8, 1.2) + 0.05, call_overhead_ms=float(rng.uniform(0, 0.1)),
                   unattributed_ms=0.0, nodes=nodes)


def synthetic_model(model: onnx.ModelProto, seed: int) -> CostModel:
    """A cost model with random times and sizes, as if profiled and measured."""
    rng = np.random.default_rng(seed)
    view = GraphView.of(model.graph)
    source = Source(Path("dag.onnx"), model, view, {i: (2, 3) for i in view.inputs})
    names = [*view.inputs, *(o for i in view.order for o in view.graph.node[i].output)]
    sizes = {n: int(rng.integers(1, 100_000)) for n in names}
    tensors, unsendable = {}, {}
    for n in names:
        if rng.random() < 0.1:
            unsendable[n] = "refused"
        else:
            tensors[n] = TensorTransfer(n, sizes[n], int(rng.integers(1, sizes[n] + 1)), float(rng.uniform(0, 1)),
                                        float(rng.uniform(0, 1)))
    transfers = Transfers("shuffle-zstd:1", tensors, sizes, unsendable)
    return CostModel(source, "0" * 64, synthetic_profile(view, rng, 1), synthetic_profile(view, rng, 2), transfers,
                     EdgeMemory(view, sizes))


def downward_closed(view: GraphView) -> list[frozenset[int]]:
    nodes = view.order
    sets = []
    for bits in itertools.product([False, True], repeat=len(nodes)):
        prefix = frozenset(n for n, b in zip(nodes, bits) if b)
        if all(set(view.dag.predecessors(v)) <= prefix for v in prefix):
            sets.append(prefix)
    return sets


def brute_force(cm: CostModel, link: Link, objective, constraints: Constraints) -> float:
    best = float("inf")
    for prefix in downward_closed(cm.source.view):
        try:
            choice = cm.choice(prefix)
        except PartitionError:
            continue  # sends a tensor the codec refuses
        if constraints.violation(cm, choice) is None:
            best = min(best, objective.score(choice.cost, link))
    return best


OBJECTIVES = {
    "latency": latency(),
    "energy": edge_energy(PowerProfile(compute_w=4.0, idle_w=0.3, radio_j_per_byte=2e-7)),
    "cloud": cloud_compute(),
    "mixed": latency() + 0.5 * cloud_compute(),
}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    random_dags(),
    st.integers(0, 2**16),
    st.sampled_from(sorted(OBJECTIVES)),
    st.floats(0.05e6, 2e9),
    st.floats(0, 100),
    st.integers(0, 3),
    st.booleans(),
)
def test_min_cut_equals_brute_force(model, seed, objective, bandwidth, rtt, min_edge_ops, no_raw_inputs) -> None:
    cm = synthetic_model(model, seed)
    link = Link(bandwidth, rtt)
    constraints = Constraints(min_edge_ops=min_edge_ops, no_raw_inputs=no_raw_inputs)
    expected = brute_force(cm, link, OBJECTIVES[objective], constraints)
    got = best_split(cm, link, OBJECTIVES[objective], constraints).best
    assert constraints.violation(cm, got) is None
    score = OBJECTIVES[objective].score(got.cost, link)
    assert abs(score - expected) <= 1e-4 * max(1.0, abs(expected)), (got.id, score, expected)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dags(), st.integers(0, 2**16), st.floats(0, 50), st.lists(st.floats(0.1e6, 1000e6), min_size=1, max_size=4))
def test_the_bandwidth_sweep_finds_the_best_split_everywhere(model, seed, rtt, probes) -> None:
    cm = synthetic_model(model, seed)
    regions = pareto(cm, rtt)
    assert regions[0].low_bps == pytest.approx(0.1e6) and regions[-1].high_bps == pytest.approx(1000e6)
    for a, b in zip(regions, regions[1:]):
        assert a.high_bps == pytest.approx(b.low_bps) and a.choice.prefix != b.choice.prefix
    for bandwidth in probes:
        link = Link(bandwidth, rtt)
        region = next(r for r in regions if r.low_bps <= bandwidth <= r.high_bps * (1 + 1e-12))
        expected = latency().score(best_split(cm, link).best.cost, link)
        assert latency().score(region.choice.cost, link) == pytest.approx(expected, rel=1e-6, abs=1e-5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dags(), st.integers(0, 2**16), st.floats(0.05e6, 2e9), st.floats(0, 100), st.floats(0.001, 0.5))
def test_a_memory_ceiling_is_respected_and_no_fitting_candidate_is_better(model, seed, bandwidth, rtt, ceiling) -> None:
    """Peak memory is not additive: the search filters candidates, so it is checked against them, not all prefixes."""
    cm = synthetic_model(model, seed)
    link = Link(bandwidth, rtt)
    constraints = Constraints(edge_memory_mb=ceiling)
    view = cm.source.view
    fitting = []
    for prefix in [frozenset(view.ancestors(c.sent)) for c in candidate_cuts(view)] + [cm.nodes, frozenset()]:
        try:
            choice = cm.choice(prefix)
        except PartitionError:
            continue
        if choice.edge_mb <= ceiling:
            fitting.append(latency().score(choice.cost, link))
    try:
        got = best_split(cm, link, constraints=constraints).best
    except PartitionError:
        assert not fitting
        return
    assert got.edge_mb <= ceiling
    assert latency().score(got.cost, link) <= min(fitting, default=float("inf")) + 1e-6
