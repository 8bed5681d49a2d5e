"""Property: on random DAGs, every candidate cut is a valid split that reproduces the model exactly."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from partitioner import inspect, split
from partitioner.cuts import candidate_cuts, partition
from partitioner.graph import GraphView
from partitioner.onnxio import session
from partitioner.verify import edge_then_cloud
from splitpoint.backends import load_session


@st.composite
def random_dags(draw: st.DrawFn) -> onnx.ModelProto:
    """Add/Relu/Identity nodes over [N, 3] floats; dangling tensors and a few others are graph outputs."""
    tensors = [f"in{i}" for i in range(draw(st.integers(1, 3)))]
    inputs = list(tensors)
    nodes, read = [], set()
    for k in range(draw(st.integers(1, 10))):
        op = draw(st.sampled_from(["Add", "Relu", "Identity"]))
        args = [draw(st.sampled_from(tensors)) for _ in range(2 if op == "Add" else 1)]
        read.update(args)
        nodes.append(helper.make_node(op, args, [f"t{k}"], name=f"n{k}"))
        tensors.append(f"t{k}")
    computed = tensors[len(inputs):]
    extra = draw(st.sets(st.sampled_from(computed)))
    outputs = [t for t in computed if t not in read or t in extra]
    info = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 3])  # noqa: E731
    graph = helper.make_graph(nodes, "dag", [info(i) for i in inputs], [info(o) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dags())
def test_every_candidate_cut_splits_the_model_exactly(model: onnx.ModelProto) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dag.onnx"
        onnx.save(model, path)
        candidates = inspect(path).candidates
        for c in candidates:
            assert len(set(c.names)) == len(c.names)
        chained = any(i.startswith("t") for n in model.graph.node for i in n.input)
        assert bool(candidates) == chained  # a node reading another's output can always be cut from it
        if not candidates:
            return
        bundle = split(path, Path(tmp) / "b", at=[c.names for c in candidates], golden=1)
        splits = [s for s in bundle.manifest.splits if s.edge_file]
        assert [s.sent_names for s in splits] == [c.names for c in candidates]
        assert [s.edge_nodes for s in splits] == [c.prefix_nodes for c in candidates]

        rng = np.random.default_rng(0)
        inputs = {vi.name: rng.standard_normal((2, 3)).astype(np.float32) for vi in model.graph.input}
        full = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        reference = dict(zip([o.name for o in full.get_outputs()], full.run(None, inputs)))
        for s in splits:
            cloud = session(bundle.path(s.cloud_file), "cloud")
            assert [i.name for i in cloud.get_inputs()] == s.sent_names  # each sent tensor once, all of them read
            got = edge_then_cloud(load_session(bundle.path(s.edge_file)), load_session(bundle.path(s.cloud_file)), inputs)
            for name, value in reference.items():
                np.testing.assert_array_equal(got[name], value)


def crossing_set_cuts(view: GraphView) -> dict[frozenset[str], int]:
    """The definition, one partition per prefix of the order: sent set -> prefix nodes."""
    cuts: dict[frozenset[str], int] = {}
    for i in range(1, len(view.order)):
        first, later = view.order[:i], view.order[i:]
        available = set(view.inputs) | {o for n in first for o in view.graph.node[n].output}
        crossing = [t for t in dict.fromkeys(t for n in later for t in view.reads[n]) if t in available]
        cut = partition(view, crossing)
        edge_works = cut.edge_outputs or any(t in view.producer for t in cut.sent)
        if edge_works and set(cut.edge_outputs) != set(view.outputs):
            cuts.setdefault(frozenset(cut.sent), len(cut.prefix))
    return cuts


@settings(max_examples=200, deadline=None)
@given(random_dags())
def test_the_candidate_sweep_matches_the_definition(model: onnx.ModelProto) -> None:
    view = GraphView.of(model.graph)
    assert {frozenset(c.sent): c.prefix_nodes for c in candidate_cuts(view)} == crossing_set_cuts(view)
