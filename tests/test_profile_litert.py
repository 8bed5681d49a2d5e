"""LiteRT profiles of .tflite models: per-operator times from timed prefix models, in the onnxruntime profiles' format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from partitioner import PartitionError, Profile, profile
from partitioner import profile_litert as pl
from partitioner.tflite.flatbuffer import op_name, read_model
from partitioner.tflite.source import TfliteSource
from splitpoint.backends import load_session
from splitpoint.bundle import file_sha256
from splitpoint.cli import main
from testbed import tflite_models as tm


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tflite")
    return {"int8": tm.save(tm.int8_cnn(), root / "int8.tflite"),
            "float16": tm.save(tm.float_cnn(float16_weights=True), root / "float16.tflite")}


@pytest.fixture(scope="module")
def int8_profile(models) -> Profile:
    return profile(models["int8"], threads=1, runs=3, warmup=1)


def test_every_operator_has_a_time_in_the_onnxruntime_format(int8_profile: Profile, models, tmp_path: Path) -> None:
    source = TfliteSource.open(models["int8"], None, lambda _: None)
    ops = [op_name(source.model, op) for op in read_model(models["int8"]).subgraphs[0].operators]
    assert sorted(int8_profile.nodes) == source.view.order == list(range(11))
    assert [n.op_type for n in int8_profile.nodes.values()] == ops
    assert all(n.ms >= 0 and n.kernels == (n.op_type,) and n.fused_into is None for n in int8_profile.nodes.values())
    assert int8_profile.backend["name"] == "litert" and int8_profile.backend["method"] == "prefix models"
    assert int8_profile.model_sha256 == file_sha256(models["int8"])
    assert int8_profile.shapes == {tm.INPUT: (1, 16, 16, 3)}
    assert int8_profile.end_to_end_ms > int8_profile.call_overhead_ms > 0
    assert 0 < int8_profile.node_sum_ms
    source_check = (int8_profile.model_sha256, source.input_shapes, source.view.order)
    int8_profile.check(*source_check)  # what plan and split do before pricing with it
    raw = json.loads(int8_profile.save(tmp_path / "p.json").read_text())
    assert set(raw["quality"]) == {"node_sum_ms", "call_overhead_ms", "unattributed_ms", "node_sum_vs_end_to_end"}
    assert Profile.load(tmp_path / "p.json").nodes == int8_profile.nodes


def test_weight_decompression_is_not_a_node(models) -> None:
    p = profile(models["float16"], threads=1, runs=2, warmup=1)
    assert [n.op_type for n in p.nodes.values()].count("CONV_2D") == 4
    assert "Constant" not in {n.op_type for n in p.nodes.values()}  # DEQUANTIZE of fp16 weights goes with its reader


def test_prefix_models_run_up_to_each_operator(models, tmp_path: Path) -> None:
    """The prefix ending after operator k computes exactly what the full model computes there."""
    source = TfliteSource.open(models["int8"], None, lambda _: None)
    feeds = source.sample(0)
    order = source.view.order
    pool = next(i for i in order if source.view.graph.node[i].output[0] == tm.POOL_CUT)
    path = pl._write_prefix(source, order[: order.index(pool) + 1], tmp_path / "prefix.tflite")
    got = load_session(path).run(feeds)
    assert list(got) == [tm.POOL_CUT]
    np.testing.assert_array_equal(got[tm.POOL_CUT], source.values([tm.POOL_CUT], feeds)[tm.POOL_CUT])


def test_big_models_are_profiled_per_segment(models, monkeypatch) -> None:
    monkeypatch.setattr(pl, "MAX_PREFIXES", 4)
    p = profile(models["int8"], threads=1, runs=2, warmup=1)
    leaders = [n for n in p.nodes.values() if n.fused_into is None]
    assert len(leaders) == 4 and p.backend["method"] == "prefix models, 4 segments"
    assert all(p.nodes[int(n.fused_into.split(":")[0])].fused_into is None for n in p.nodes.values() if n.fused_into)
    assert all(n.ms == 0 for n in p.nodes.values() if n.fused_into)
    assert pl._segment_ends(11) == [2, 5, 7, 10] and pl._segment_ends(3) == [0, 1, 2]


def test_the_backend_must_be_the_models_own(models) -> None:
    with pytest.raises(PartitionError, match="int8.tflite is a TFLite model; profile it with --backend litert"):
        profile(models["int8"], backend="onnxruntime")


def test_cli_profiles_tflite_with_litert_by_default(models, tmp_path: Path, capsys) -> None:
    out = tmp_path / "edge.json"
    assert main(["profile", str(models["int8"]), "--threads", "2", "--runs", "2", "--warmup", "1", "-o", str(out)]) == 0
    assert f"wrote {out}: litert " in capsys.readouterr().out
    assert Profile.load(out).backend["threads"] == 2
