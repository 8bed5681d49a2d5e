"""Profiles measured with onnxruntime's node profiler: keys, fused kernels, quality figures, checks, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from partitioner import PartitionError, profile
from partitioner.graph import GraphView
from partitioner.profile import Profile
from splitpoint.bundle import file_sha256
from splitpoint.cli import main


@pytest.fixture(scope="module")
def demo_profile(demo_model: Path) -> Profile:
    return profile(demo_model, threads=1, runs=3, warmup=1)


def test_every_compute_node_has_a_time_keyed_by_index_and_name(demo_profile: Profile, demo_model: Path) -> None:
    graph = onnx.load(demo_model).graph
    view = GraphView.of(graph)
    assert sorted(demo_profile.nodes) == sorted(view.order)
    keys = {n.key for n in demo_profile.nodes.values()}
    assert keys == {f"{i}:{graph.node[i].name}" for i in view.order}
    assert all(n.ms >= 0 for n in demo_profile.nodes.values())
    assert demo_profile.model_sha256 == file_sha256(demo_model)
    assert demo_profile.shapes == {"image": (1, 3, 64, 64)}
    assert demo_profile.end_to_end_ms > demo_profile.call_overhead_ms > 0
    assert demo_profile.node_sum_ms > 0
    assert demo_profile.machine["cpu_count"] >= 1 and demo_profile.machine["processor"]


def test_fused_kernels_are_charged_to_the_first_node_of_the_group(demo_profile: Profile) -> None:
    by_name = {n.name: n for n in demo_profile.nodes.values()}
    stem, relu = by_name["stem"], by_name["stem_relu"]  # onnxruntime fuses Conv+Relu into one kernel
    assert stem.ms > 0 and stem.kernels
    assert relu.ms == 0 and relu.fused_into == stem.key


def test_a_segment_is_one_call_scaled_to_the_measured_end_to_end(demo_profile: Profile) -> None:
    everything = demo_profile.nodes
    assert demo_profile.segment_ms(everything) == pytest.approx(demo_profile.end_to_end_ms)
    assert demo_profile.segment_ms([]) == 0.0
    first = next(iter(everything))
    assert demo_profile.segment_ms([first]) == pytest.approx(demo_profile.call_overhead_ms + demo_profile.node_ms(first))


def test_json_round_trip(demo_profile: Profile, tmp_path: Path) -> None:
    path = demo_profile.save(tmp_path / "edge.json")
    raw = json.loads(path.read_text())
    assert raw["format"] == "splitpoint-profile" and raw["version"] == 1
    assert set(raw["quality"]) == {"node_sum_ms", "call_overhead_ms", "unattributed_ms", "node_sum_vs_end_to_end"}
    assert raw["backend"]["name"] == "onnxruntime" and raw["backend"]["threads"] == 1
    loaded = Profile.load(path)
    assert loaded.nodes == demo_profile.nodes
    assert loaded.end_to_end_ms == pytest.approx(demo_profile.end_to_end_ms)
    assert loaded.shapes == demo_profile.shapes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(end_to_end=st.floats(0.01, 0.05), scale=st.floats(0.1, 2.0))
def test_saving_a_loaded_profile_writes_the_same_file(demo_profile: Profile, tmp_path: Path, end_to_end, scale) -> None:
    """A bundle copies the profiles it was priced with: they must not change on the way (a derived ratio
    computed from unrounded times once came out one digit off after a reload)."""
    nodes = {i: replace(n, ms=n.ms * scale / 7) for i, n in demo_profile.nodes.items()}
    first = replace(demo_profile, end_to_end_ms=end_to_end, nodes=nodes).to_json()
    path = tmp_path / "p.json"
    path.write_text(json.dumps(first))
    assert Profile.load(path).to_json() == first


def test_a_profile_is_refused_for_another_model_or_shape(demo_profile: Profile, tmp_path: Path) -> None:
    path = demo_profile.save(tmp_path / "E.json")
    loaded = Profile.load(path)
    sha = demo_profile.model_sha256[:12]
    with pytest.raises(PartitionError, match=rf"profile {path} was measured on model sha256 {sha}\.\., not this model"):
        loaded.check("ab" * 32, demo_profile.shapes, demo_profile.nodes)
    with pytest.raises(PartitionError, match=r"measured with input shapes image=1,3,64,64, not image=2,3,64,64"):
        loaded.check(demo_profile.model_sha256, {"image": (2, 3, 64, 64)}, demo_profile.nodes)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), ("{", "not valid JSON"), ('{"format": "other"}', "not a splitpoint profile")],
)
def test_bad_profile_files(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PartitionError, match=message):
        Profile.load(path)


def test_nodes_with_bodies_and_without_names(tmp_path: Path) -> None:
    """An If whose branches read outer tensors, and nameless nodes: every node keyed, the If timed."""
    info = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 4])  # noqa: E731
    then = helper.make_graph([helper.make_node("Relu", ["a"], ["r"])], "then", [], [info("r")])
    other = helper.make_graph([helper.make_node("Neg", ["a"], ["m"])], "else", [], [info("m")])
    flag = numpy_helper.from_array(np.array(True), "flag")
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "x"], ["a"]),
            helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other),
            helper.make_node("Mul", ["y", "a"], ["z"]),
        ],
        "ifmodel", [info("x")], [info("z")], initializer=[flag],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "if.onnx")
    p = profile(tmp_path / "if.onnx", threads=1, runs=2, warmup=1)
    assert [n.key for n in p.nodes.values()] == ["0:", "1:", "2:"]
    assert p.nodes[1].ms > 0


@pytest.mark.parametrize(("backend", "message"), [
    ("litert", "--backend litert: democnn.onnx is an ONNX model; profile it with --backend onnxruntime"),
    ("torch", "--backend torch profiles a PyTorch module: give the model as FILE.py:FACTORY with --example-shape, "
              "not democnn.onnx"),
    ("tvm", "--backend tvm: unknown backend; use one of onnxruntime, litert, torch"),
])
def test_a_backend_that_cannot_run_the_model_is_refused(demo_model: Path, backend: str, message: str) -> None:
    with pytest.raises(PartitionError) as e:
        profile(demo_model, backend=backend)
    assert str(e.value) == message


def test_example_shapes_are_for_modules_only(demo_model: Path) -> None:
    with pytest.raises(PartitionError, match="--example-shape and --dynamo are for PyTorch modules"):
        profile(demo_model, example_shapes=["1,3,64,64"])


def test_cli_profile(demo_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "edge.json"
    assert main(["profile", str(demo_model), "--threads", "1", "--runs", "2", "--warmup", "1", "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert f"wrote {out}: onnxruntime" in printed.out
    assert "profiled 3/3 runs" in printed.err  # progress goes to stderr
    assert Profile.load(out).threads == 1
    assert main(["profile", str(demo_model), "--threads", "1", "--backend", "litert", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: --backend litert: democnn.onnx is an ONNX model; profile it with --backend onnxruntime"
