"""Cut semantics on small hand-built graphs: subgraph bodies, graph inputs and outputs at the cut, Constants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from partitioner import PartitionError, inspect, split
from partitioner.verify import edge_then_cloud
from splitpoint.backends import load_session
from splitpoint.bundle import Bundle

FLOAT = TensorProto.FLOAT


def save(tmp_path: Path, nodes: list, inputs: list, outputs: list, name: str = "m") -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


def vec(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, FLOAT, ["N", 4])


def segments(bundle: Bundle, split_id: str) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    s = bundle.manifest.split(split_id)
    return onnx.load(str(bundle.path(s.edge_file))), onnx.load(str(bundle.path(s.cloud_file)))


def names(values) -> list[str]:
    return [v.name for v in values]


@pytest.fixture
def if_model(tmp_path: Path) -> Path:
    """x -> Relu -> a -> Neg -> c; If(cond) computes c + a or c * a, reading both from the outer scope."""
    then_body = helper.make_graph(
        [helper.make_node("Add", ["c", "a"], ["then_out"])], "then", [], [helper.make_tensor_value_info("then_out", FLOAT, None)]
    )
    else_body = helper.make_graph(
        [helper.make_node("Mul", ["c", "a"], ["else_out"])], "else", [], [helper.make_tensor_value_info("else_out", FLOAT, None)]
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Neg", ["a"], ["c"], name="neg"),
        helper.make_node("If", ["cond"], ["y"], name="choose", then_branch=then_body, else_branch=else_body),
    ]
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    return save(tmp_path, nodes, [vec("x"), cond], [vec("y")], "if_model")


def test_cut_inside_an_if_body_is_refused(if_model: Path, tmp_path: Path) -> None:
    with pytest.raises(PartitionError, match=r"cut inside the body of If node 'choose'"):
        split(if_model, tmp_path / "b", at="then_out")


def test_outer_scope_references_must_be_sent(if_model: Path, tmp_path: Path) -> None:
    with pytest.raises(PartitionError, match=r"also needs 'a' .* use --at c,a$"):
        split(if_model, tmp_path / "b", at="c")
    log: list[str] = []
    bundle = split(if_model, tmp_path / "b", at="c,a", golden=4, log=log.append)
    s = bundle.manifest.split("c_a_cond")
    assert s.sent_names == ["c", "a", "cond"]
    assert any("cond" in line and "graph input" in line for line in log)
    edge, cloud = segments(bundle, s.id)
    assert names(edge.graph.input) == ["x"] and names(edge.graph.output) == ["c", "a"]
    assert names(cloud.graph.input) == ["c", "a", "cond"] and [n.op_type for n in cloud.graph.node] == ["If"]
    for cond in (True, False):
        inputs = {"x": np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4), "cond": np.array(cond)}
        a = np.maximum(inputs["x"], 0)
        expected = -a + a if cond else -a * a
        got = edge_then_cloud(load_session(bundle.path(s.edge_file)), load_session(bundle.path(s.cloud_file)), inputs)
        np.testing.assert_array_equal(got["y"], expected)


def test_candidates_include_outer_scope_references(if_model: Path) -> None:
    report = inspect(if_model)
    assert [sorted(c.names) for c in report.candidates] == [["a", "cond"], ["a", "c", "cond"]]
    assert report.candidates[0].bytes == 4 * 4 + 1  # a: float32[1,4]; cond: bool scalar


def test_graph_input_read_by_the_suffix_is_sent(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Add", ["a", "y"], ["out"])]
    path = save(tmp_path, nodes, [vec("x"), vec("y")], [vec("out")])
    log: list[str] = []
    bundle = split(path, tmp_path / "b", at="a", log=log.append)
    s = bundle.manifest.split("a_y")
    assert s.sent_names == ["a", "y"] and [t.bytes for t in s.cut] == [16, 16]
    edge, cloud = segments(bundle, s.id)
    assert names(edge.graph.input) == ["x"] and names(cloud.graph.input) == ["a", "y"]
    assert cloud.graph.input[1].type.tensor_type.shape.dim[0].dim_param == "N"
    assert any("graph input(s) y" in line for line in log)


def test_graph_outputs_computed_before_the_cut_are_edge_outputs(tmp_path: Path) -> None:
    """x -> Relu -> a (output) -> Sigmoid -> b (output); a -> Neg -> c -> Exp -> d (output)."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Sigmoid", ["a"], ["b"]),
        helper.make_node("Neg", ["a"], ["c"]),
        helper.make_node("Exp", ["c"], ["d"]),
    ]
    path = save(tmp_path, nodes, [vec("x")], [vec("a"), vec("b"), vec("d")])
    log: list[str] = []
    bundle = split(path, tmp_path / "b", at=[["b", "c"], ["a"]], log=log.append)
    late, early = bundle.manifest.splits[:2]
    assert late.sent_names == ["c"] and late.edge_outputs == ("a", "b")
    assert any("b not needed by the cloud side" in line for line in log)
    edge, cloud = segments(bundle, late.id)
    assert names(edge.graph.output) == ["c", "a", "b"] and names(cloud.graph.output) == ["d"]
    assert early.sent_names == ["a"] and early.edge_outputs == ("a",)
    edge, cloud = segments(bundle, early.id)
    assert names(edge.graph.output) == ["a"] and names(cloud.graph.output) == ["b", "d"]
    assert all(s.verification["exact"] for s in (late, early))


def test_constants_are_copied_to_each_side_not_sent(tmp_path: Path) -> None:
    two = helper.make_tensor("two", FLOAT, [], [2.0])
    nodes = [
        helper.make_node("Constant", [], ["k"], value=two),
        helper.make_node("Mul", ["x", "k"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Mul", ["b", "k"], ["out"]),
    ]
    path = save(tmp_path, nodes, [vec("x")], [vec("out")])
    assert [c.names for c in inspect(path).candidates] == [["a"], ["b"]]
    with pytest.raises(PartitionError, match="'k' is a constant"):
        split(path, tmp_path / "b", at="k")
    bundle = split(path, tmp_path / "b", at="b")
    edge, cloud = segments(bundle, "b")
    assert names(cloud.graph.input) == ["b"]
    assert [n.op_type for n in edge.graph.node] == ["Constant", "Mul", "Relu"]
    assert [n.op_type for n in cloud.graph.node] == ["Constant", "Mul"]


def test_suffix_reading_more_than_the_crossing_set_gets_a_closed_candidate(tmp_path: Path) -> None:
    """After A, B, F only f crosses, but B (whose output is a graph output) does not feed f,
    so the cut at f puts B in the suffix, which then needs a too."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="A"),
        helper.make_node("Neg", ["a"], ["b"], name="B"),
        helper.make_node("Sigmoid", ["a"], ["f"], name="F"),
        helper.make_node("Exp", ["f"], ["g"], name="G"),
    ]
    path = save(tmp_path, nodes, [vec("x")], [vec("b"), vec("g")])
    report = inspect(path)
    assert [c.names for c in report.candidates] == [["a"], ["f", "a"]]
    bundle = split(path, tmp_path / "b", at=[c.names for c in report.candidates])
    assert [s.id for s in bundle.manifest.splits[:2]] == ["a", "f_a"]


def test_auto_needs_a_cut_between_nodes(tmp_path: Path) -> None:
    path = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [vec("x")], [vec("y")])
    assert inspect(path).candidates == []
    with pytest.raises(PartitionError, match="no cut between its nodes; use split 'local' or 'cloud'"):
        split(path, tmp_path / "b")


def test_weights_an_identity_passes_on_are_kept_not_sent(tmp_path: Path) -> None:
    """torch's legacy exporter writes shared weights as Identity nodes of initializers: a cut
    must not send them (they would count as tensors the prefix makes), each side keeps its own."""
    w = helper.make_tensor("w", FLOAT, [4], [1.0, -2.0, 3.0, -4.0])
    nodes = [
        helper.make_node("Identity", ["w"], ["w_copy"]),
        helper.make_node("Cast", ["w_copy"], ["w_cast"], to=FLOAT),
        helper.make_node("Mul", ["x", "w_cast"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Mul", ["b", "w_copy"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "m", [vec("x")], [vec("out")], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert [c.names for c in inspect(path).candidates] == [["a"], ["b"]]
    with pytest.raises(PartitionError, match="'w_copy' is a constant"):
        split(path, tmp_path / "b", at="w_copy")
    bundle = split(path, tmp_path / "b", at="b")
    s = bundle.manifest.split("b")
    assert s.sent_names == ["b"]
    edge, cloud = segments(bundle, "b")
    assert [n.op_type for n in cloud.graph.node] == ["Identity", "Mul"]
    assert names(cloud.graph.initializer) == ["w"] and names(edge.graph.initializer) == ["w"]
    x = {"x": np.arange(8, dtype=np.float32).reshape(2, 4) - 3}
    want = load_session(path).run(x)["out"]
    got = edge_then_cloud(load_session(bundle.path(s.edge_file)), load_session(bundle.path(s.cloud_file)), x)
    np.testing.assert_array_equal(got["out"], want)
