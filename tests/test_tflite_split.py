"""partitioner.inspect / split on .tflite models: flatbuffer segments, LiteRT verification, every user error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from partitioner import inspect, split
from partitioner.tflite.flatbuffer import ints, op_name, read_model, tensor_name
from partitioner.verify import edge_then_cloud
from splitpoint import cli
from splitpoint.backends import load_session
from splitpoint.bundle import CLOUD, LOCAL, Bundle, file_sha256
from splitpoint.compare import EXACT
from splitpoint.errors import SplitpointError
from testbed import tflite_models as tm

BLOCK = ",".join(tm.BLOCK_CUT)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tflite")
    return {
        "float": tm.save(tm.float_cnn(), root / "float.tflite"),
        "float16": tm.save(tm.float_cnn(float16_weights=True), root / "float16.tflite"),
        "int8": tm.save(tm.int8_cnn(), root / "int8.tflite"),
        "while": tm.save(tm.while_model(), root / "while.tflite"),
        "custom": tm.save(tm.custom_op_model(), root / "custom.tflite"),
        "random": tm.save(tm.random_model(), root / "random.tflite"),
    }


@pytest.fixture(scope="module")
def int8_bundle(models, tmp_path_factory) -> Bundle:
    return split(models["int8"], tmp_path_factory.mktemp("bundles") / "int8", at=[tm.BLOCK_CUT, [tm.POOL_CUT]])


def run_split(bundle: Bundle, split_id: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    s = bundle.manifest.split(split_id)
    return edge_then_cloud(load_session(bundle.path(s.edge_file)), load_session(bundle.path(s.cloud_file)), inputs)


def tensors_by_name(path: Path) -> dict[str, object]:
    main = read_model(path).subgraphs[0]
    return {tensor_name(t): t for t in main.tensors}


def test_inspect_lists_tflite_tensor_names(models):
    report = inspect(models["int8"])
    assert report.total_nodes == 11
    assert [(t.name, t.dtype, t.shape, t.bytes) for t in report.inputs] == [(tm.INPUT, "float32", (None, 16, 16, 3), 3072)]
    block = next(c for c in report.candidates if set(c.names) == set(tm.BLOCK_CUT))
    assert [t.dtype for t in block.tensors] == ["int8", "int8"] and block.bytes == 2 * 16 * 16 * 8
    assert report.auto is not None and report.auto.names == [tm.POOL_CUT]
    assert "model/block/conv1/Relu int8[?,16,16,8] 2,048 B" in report.to_text()


def test_inspect_measures_at_the_given_batch(models):
    report = inspect(models["float"], {tm.INPUT: [2, 16, 16, 3]})
    assert report.inputs[0].bytes == 2 * 3072
    assert next(c for c in report.candidates if c.names == [tm.POOL_CUT]).bytes == 2 * 8 * 8 * 8 * 4


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_split_writes_verified_tflite_segments(kind, models, tmp_path):
    bundle = split(models[kind], tmp_path / "b", at=[BLOCK, "auto"])
    m = bundle.manifest
    assert m.model_file == "model.tflite" and m.opset == 3
    assert bundle.model_path().read_bytes() == models[kind].read_bytes()
    assert m.model_sha256 == file_sha256(models[kind])
    assert [s.id for s in m.splits] == ["model_block_conv1_Relu_model_stem_Relu", "model_pool_AvgPool", LOCAL, CLOUD]
    assert m.split(CLOUD).cloud_file == "model.tflite"
    for s in m.splits[:2]:
        assert s.edge_file.endswith(".tflite") and s.cloud_file.endswith(".tflite")
        assert s.verification == EXACT.as_dict()  # LiteRT runs the same kernels cut or not: bit-exact
    x = {tm.INPUT: np.random.default_rng(3).standard_normal((2, 16, 16, 3)).astype(np.float32)}
    want = load_session(bundle.model_path()).run(x)[tm.OUTPUT]
    for s in m.splits[:2]:
        np.testing.assert_array_equal(run_split(bundle, s.id, x)[tm.OUTPUT], want)


def test_int8_crossing_tensors_keep_their_quantization_on_both_sides(int8_bundle):
    s = int8_bundle.manifest.split("model_block_conv1_Relu_model_stem_Relu")
    assert [(t.name, t.dtype) for t in s.cut] == [(n, "int8") for n in tm.BLOCK_CUT]
    original = tensors_by_name(int8_bundle.model_path())
    edge, cloud = tensors_by_name(int8_bundle.path(s.edge_file)), tensors_by_name(int8_bundle.path(s.cloud_file))
    for name in tm.BLOCK_CUT:
        want = original[name].quantization
        for side in (edge, cloud):
            q = side[name].quantization
            assert side[name].type == original[name].type
            assert (list(q.scale), list(q.zeroPoint)) == (list(want.scale), list(want.zeroPoint))
    conv = "model/block/conv2/Conv2D"  # per-channel weights of a cloud-side conv
    assert len(cloud[conv].quantization.scale) == 8 and conv not in edge


def test_segments_keep_only_what_they_use(int8_bundle):
    s = int8_bundle.manifest.split("model_pool_AvgPool")
    full, edge = read_model(int8_bundle.model_path()), read_model(int8_bundle.path(s.edge_file))
    cloud = read_model(int8_bundle.path(s.cloud_file))
    ops = {side: [op_name(m, op) for op in m.subgraphs[0].operators] for side, m in (("edge", edge), ("cloud", cloud))}
    assert ops["edge"] == ["QUANTIZE", "CONV_2D", "CONV_2D", "CONV_2D", "ADD", "AVERAGE_POOL_2D"]
    assert ops["cloud"] == ["CONV_2D", "MEAN", "RESHAPE", "FULLY_CONNECTED", "DEQUANTIZE"]
    for m, names in ((edge, ops["edge"]), (cloud, ops["cloud"])):
        assert len(m.operatorCodes) == len(set(names))
        assert m.signatureDefs is None
        assert [bytes(m.buffers[x.buffer].data).rstrip(b"\0") for x in m.metadata] == [b"1.14.0"]
        assert len(m.buffers) < len(full.buffers)
    main = edge.subgraphs[0]
    assert [tensor_name(main.tensors[i]) for i in [*ints(main.inputs), *ints(main.outputs)]] == [tm.INPUT, tm.POOL_CUT]


def test_weight_decompression_runs_on_the_side_that_uses_the_weights(models, tmp_path):
    """DEQUANTIZE of float16 weights is part of the weights, not a node to cut after."""
    report = inspect(models["float16"])
    assert report.total_nodes == 9 and not any("fp16" in n or "Conv2D" in n for c in report.candidates for n in c.names)
    bundle = split(models["float16"], tmp_path / "b", at=tm.POOL_CUT)
    s = bundle.manifest.split("model_pool_AvgPool")
    assert (s.edge_nodes, s.cloud_nodes) == (5, 4) and s.verification["exact"]
    for rel, dequantized in ((s.edge_file, 6), (s.cloud_file, 4)):  # weight and bias of 3 convs | of a conv and the FC
        m = read_model(bundle.path(rel))
        assert [op_name(m, op) for op in m.subgraphs[0].operators].count("DEQUANTIZE") == dequantized
    with pytest.raises(SplitpointError, match="'model/head/Conv2D' is a constant"):
        split(models["float16"], tmp_path / "c", at="model/head/Conv2D")


def test_control_flow_bodies_go_with_their_operator(models, tmp_path):
    bundle = split(models["while"], tmp_path / "b", at="pre")
    s = bundle.manifest.split("pre")
    assert len(read_model(bundle.path(s.cloud_file)).subgraphs) == 3  # main, cond, body
    x = {"x": np.arange(4, dtype=np.float32).reshape(1, 4)}
    np.testing.assert_array_equal(run_split(bundle, "pre", x)["out"], 9 * (x["x"] + 1))


def test_unnamed_and_repeated_tensor_names_get_unique_ones(tmp_path):
    model = tm.float_cnn()
    tensors = model.subgraphs[0].tensors
    renamed = [t for t in tensors if tensor_name(t) in (tm.POOL_CUT, "model/head/Relu")]
    renamed[0].name, renamed[1].name = "", tm.BLOCK_CUT[0]
    path = tm.save(model, tmp_path / "renamed.tflite")
    names = [t.name for c in inspect(path).candidates for t in c.tensors]
    pool = f"tensor#{tensors.index(renamed[0])}"
    assert pool in names and f"{tm.BLOCK_CUT[0]}#{tensors.index(renamed[1])}" in names
    bundle = split(path, tmp_path / "b", at=pool)
    assert bundle.manifest.split(bundle.manifest.default_split).sent_names == [pool]


@pytest.mark.parametrize(
    ("model", "at", "message"),
    [
        ("float", "model/stem/relu", "no tensor named 'model/stem/relu' in the model; did you mean 'model/stem/Relu'"),
        ("float", tm.BLOCK_CUT[0], f"does not separate the graph: the cloud side also needs 'model/stem/Relu' "
                                   f"from the edge side; use --at {BLOCK}"),
        ("float", "model/stem/Conv2D", "tensor 'model/stem/Conv2D' is a constant"),
        ("float", tm.OUTPUT, "leaves nothing for the cloud to compute"),
        ("while", "body/acc_next", "cut inside the body of WHILE node 'while:0'; cut at its outputs (while:0, while:1)"),
        ("custom", "relu", "custom.tflite: LiteRT cannot load it: Encountered unresolved custom op: SplitpointTestOp"),
        ("random", "noisy", "split 'noisy' does not reproduce the model on golden case 0: outputs differ by"),
        ("not_tflite", "x", "not_tflite.tflite: not a TFLite flatbuffer (no TFL3 file identifier)"),
    ],
)
def test_errors_are_one_line_and_write_nothing(model, at, message, models, tmp_path):
    path = models.get(model) or tmp_path / f"{model}.tflite"
    if not path.exists():
        path.write_bytes(b"\x1c\x00\x00\x00ONNXnot a flatbuffer")
    with pytest.raises(SplitpointError) as e:
        split(path, tmp_path / "b", at=at)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))


def test_cli_inspects_and_splits_tflite(models, tmp_path, capsys):
    assert cli.main(["inspect", str(models["float"])]) == 0
    assert f"* auto: candidate 4, --at {tm.POOL_CUT}" in capsys.readouterr().out
    assert cli.main(["split", str(models["int8"]), "-o", str(tmp_path / "b"), "--at", BLOCK]) == 0
    assert "split model_block_conv1_Relu_model_stem_Relu: bit-exact" in capsys.readouterr().out
    assert cli.main(["split", str(models["float"]), "-o", str(tmp_path / "c"), "--at", "model/nope"]) == 2
    assert capsys.readouterr().err.startswith("error: no tensor named 'model/nope'")
