"""partitioner.inspect / split on the demo CNN: cuts, bundles, verification and every user error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import partitioner
from partitioner import PartitionError, inspect, parse_shapes, split
from partitioner.verify import edge_then_cloud
from splitpoint import defaults
from splitpoint.backends import load_session
from splitpoint.bundle import CLOUD, LOCAL, Bundle, file_sha256
from splitpoint.compare import array_difference
from splitpoint.errors import SplitpointError
from testbed.models import demo_cnn, save_demo_cnn


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    return save_demo_cnn(tmp_path / "demo_cnn.onnx")


def full_model(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))


def run_split(bundle: Bundle, split_id: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    s = bundle.manifest.split(split_id)
    return edge_then_cloud(load_session(bundle.path(s.edge_file)), load_session(bundle.path(s.cloud_file)), inputs)


# --- inspect -------------------------------------------------------------------------------------


def test_inspect_lists_every_distinct_crossing_set(demo: Path) -> None:
    report = inspect(demo)
    assert len(report.candidates) == 12
    assert [c.index for c in report.candidates] == list(range(12))
    assert all(c.total_nodes == 13 for c in report.candidates)
    assert report.inputs[0].shape == ("N", 3, 64, 64) and report.inputs[0].bytes == 3 * 64 * 64 * 4
    skip = next(c for c in report.candidates if set(c.names) == {"block.relu1", "stem.relu"})
    assert skip.prefix_nodes == 4
    assert skip.bytes == 2 * 16 * 64 * 64 * 4
    assert all(t.shape == ("N", 16, 64, 64) for t in skip.tensors)


def test_inspect_text_marks_the_automatic_choice(demo: Path) -> None:
    report = inspect(demo)
    assert report.auto is not None and report.auto.names == ["pool.out"]
    text = report.to_text()
    assert "--at pool.out" in text and "block.relu1" in text
    assert "dynamic dim 0" in text  # the batch default is reported, not hidden


def test_inspect_uses_given_shapes(demo: Path) -> None:
    report = inspect(demo, {"image": [4, 3, 64, 64]})
    assert report.inputs[0].bytes == 4 * 3 * 64 * 64 * 4
    assert report.candidates[0].bytes == 4 * 16 * 64 * 64 * 4


# --- split ---------------------------------------------------------------------------------------


def test_split_single_and_multi_tensor_cuts(demo: Path, tmp_path: Path) -> None:
    log: list[str] = []
    bundle = split(demo, tmp_path / "b", at=[["pool.out"], "block.relu1,stem.relu"], log=log.append)
    m = bundle.manifest
    assert [s.id for s in m.splits] == ["pool.out", "block.relu1_stem.relu", LOCAL, CLOUD]
    assert m.default_split == "pool.out"
    multi = m.split("block.relu1_stem.relu")
    assert multi.sent_names == ["block.relu1", "stem.relu"]
    assert multi.cut_bytes == 2 * 16 * 64 * 64 * 4
    assert (multi.edge_nodes, multi.cloud_nodes) == (4, 9)
    for s in m.splits[:2]:
        assert set(s.verification) == {"exact", "max_abs", "max_rel", "tolerance", "ratio"} and s.verification["ratio"] <= 1
        onnx.checker.check_model(str(bundle.path(s.edge_file)))
        onnx.checker.check_model(str(bundle.path(s.cloud_file)))
    inputs, reference = bundle.golden_cases()[0]
    for s in m.splits[:2]:
        assert array_difference(reference["logits"], run_split(bundle, s.id, inputs)["logits"]).ok
    assert any(line.startswith("verifying split") for line in log)


def test_bundle_manifest_and_files(demo: Path, tmp_path: Path) -> None:
    bundle = split(demo, tmp_path / "b", at="pool.out", golden=3, name="My Model")
    m = bundle.manifest
    assert m.name == "My_Model" and m.opset == 17 and m.codec == defaults.CODEC
    assert m.model_sha256 == file_sha256(bundle.model_path())
    assert len(m.golden) == 3 and len(bundle.golden_cases()) == 3
    assert [t.name for t in m.inputs] == ["image"] and m.outputs[0].shape == ("N", 10)
    local, cloud = m.split(LOCAL), m.split(CLOUD)
    assert local.cut == () and local.edge_file is None and local.cloud_file is None
    assert cloud.edge_file is None and cloud.cloud_file == m.model_file and cloud.sent_names == ["image"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers
    inputs, outputs = bundle.golden_cases()[2]
    np.testing.assert_array_equal(full_model(bundle.model_path(), inputs)["logits"], outputs["logits"])


def test_auto_picks_fewest_bytes_among_balanced_cuts(demo: Path, tmp_path: Path) -> None:
    log: list[str] = []
    bundle = split(demo, tmp_path / "b", log=log.append)
    s = bundle.manifest.split(bundle.manifest.default_split)
    assert s.sent_names == ["pool.out"] and s.verification["exact"] in (True, False)
    assert any(line.startswith("auto: cut at pool.out") for line in log)


def test_dynamic_batch_survives_the_split(demo: Path, tmp_path: Path) -> None:
    bundle = split(demo, tmp_path / "b", at=[["block.relu1", "stem.relu"], ["pool.out"]])
    batch3 = {"image": np.random.default_rng(7).standard_normal((3, 3, 64, 64)).astype(np.float32)}
    reference = full_model(demo, batch3)["logits"]
    for s in bundle.manifest.splits[:2]:
        edge = onnx.load(str(bundle.path(s.edge_file)))
        assert edge.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
        assert array_difference(reference, run_split(bundle, s.id, batch3)["logits"]).ok


def test_same_cut_twice_is_kept_once(demo: Path, tmp_path: Path) -> None:
    bundle = split(demo, tmp_path / "b", at=[["pool.out"], ["auto"]])
    assert [s.id for s in bundle.manifest.splits] == ["pool.out", LOCAL, CLOUD]


@pytest.mark.parametrize(
    ("at", "ids"),
    [
        ("gap.out", ["gap.out"]),
        (["block.relu1", "stem.relu"], ["block.relu1_stem.relu"]),
        (["auto", "block.relu1,stem.relu"], ["pool.out", "block.relu1_stem.relu"]),  # repeated --at options
        ([["gap.out"], "flat"], ["gap.out", "flat"]),
    ],
)
def test_forms_of_at(demo: Path, tmp_path: Path, at, ids: list[str]) -> None:
    assert [s.id for s in split(demo, tmp_path / "b", at=at, golden=1).manifest.splits] == [*ids, LOCAL, CLOUD]


def test_refuses_a_bundle_that_does_not_verify(demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = partitioner.extract.extract_segment

    def corrupted(*args, **kwargs) -> onnx.ModelProto:
        segment = real(*args, **kwargs)
        if segment.graph.name.endswith(".cloud"):
            weight = segment.graph.initializer[0]
            weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 1.5, weight.name))
        return segment

    monkeypatch.setattr(partitioner.extract, "extract_segment", corrupted)
    with pytest.raises(PartitionError, match="does not reproduce the model"):
        split(demo, tmp_path / "b", at="pool.out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_cnn.onnx"]


def test_overwrite_rules(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    split(demo, out, at="pool.out")
    with pytest.raises(PartitionError, match="overwrite"):
        split(demo, out, at="gap.out")
    bundle = split(demo, out, at="gap.out", overwrite=True)
    assert bundle.manifest.default_split == "gap.out" and not (out / "edge" / "pool.out.onnx").exists()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(PartitionError, match="not a bundle"):
        split(demo, other, at="pool.out", overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert split(demo, empty, at="pool.out").root == empty.resolve()


def test_large_models_keep_weights_beside_them(demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partitioner.onnxio, "PROTO_LIMIT", 10_000)  # demo_cnn's ~50 kB counts as "over 2 GB"
    bundle = split(demo, tmp_path / "b", at="pool.out")
    data = bundle.root / "model.onnx.data"
    assert data.is_file() and bundle.manifest.model_sha256 == file_sha256(bundle.model_path(), data)
    assert (bundle.root / "cloud" / "pool.out.onnx.data").is_file()
    inputs, outputs = bundle.golden_cases()[0]
    np.testing.assert_array_equal(full_model(bundle.model_path(), inputs)["logits"], outputs["logits"])


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "message"),
    [
        ("stem.rel", r"no tensor named 'stem.rel' in the model; did you mean 'stem.relu'"),
        ("block.relu1", r"does not separate the graph: .* needs 'stem.relu' .* use --at block.relu1,stem.relu$"),
        ("image", r"nothing runs on the edge; use split 'cloud'"),
        ("logits", r"leaves nothing for the cloud to compute; use split 'local'"),
        ("stem.weight", r"'stem.weight' is a constant"),
        (",", r"empty cut"),
        ([], r"no cut given"),
    ],
)
def test_bad_cuts_are_one_line_errors(demo: Path, tmp_path: Path, at: str, message: str) -> None:
    with pytest.raises(PartitionError, match=message) as e:
        split(demo, tmp_path / "b", at=at)
    assert "\n" not in str(e.value) and isinstance(e.value, SplitpointError)
    assert not (tmp_path / "b").exists()


def test_not_onnx_and_missing_files(tmp_path: Path) -> None:
    text = tmp_path / "model.onnx"
    text.write_text("this is not a protobuf, just some words\n" * 10)
    with pytest.raises(PartitionError, match="not an ONNX model"):
        inspect(text)
    with pytest.raises(PartitionError, match="no such file"):
        split(tmp_path / "absent.onnx", tmp_path / "b")


def test_missing_external_data(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save_model(demo_cnn(), path, save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(PartitionError, match="external data"):
        inspect(path)


def test_shapes(tmp_path: Path) -> None:
    assert parse_shapes(["image=1,3,64,64", "mask=2"]) == {"image": (1, 3, 64, 64), "mask": (2,)}
    for bad in ["image", "image=1,x", "=1,2", "image=-1"]:
        with pytest.raises(PartitionError, match=f"--shape {bad!r}"):
            parse_shapes([bad])
    with pytest.raises(PartitionError, match="given twice"):
        parse_shapes(["a=1", "a=2"])

    model = demo_cnn()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    path = tmp_path / "hw.onnx"
    onnx.save(model, path)
    with pytest.raises(PartitionError, match=r"input 'image' dim 2 \(H\) is dynamic; give its size with --shape image=N,3,H,W"):
        inspect(path)
    with pytest.raises(PartitionError, match="dim 1 is fixed to 3"):
        inspect(path, {"image": [1, 4, 32, 32]})
    with pytest.raises(PartitionError, match="did you mean 'image'"):
        inspect(path, {"imag": [1, 3, 32, 32]})
    report = inspect(path, {"image": [1, 3, 32, 32]})
    assert report.inputs[0].shape == ("N", 3, "H", "W") and report.inputs[0].bytes == 3 * 32 * 32 * 4


def test_bad_codec_is_refused_before_any_work(demo: Path, tmp_path: Path) -> None:
    with pytest.raises(SplitpointError, match="lzma"):
        split(demo, tmp_path / "b", at="pool.out", codec="lzma")
    assert not (tmp_path / "b").exists()


def test_dynamic_image_size_survives_the_split(tmp_path: Path) -> None:
    """Batch and image size stay dynamic: split at 32x32, run at 48x40 with batch 2."""
    model = demo_cnn()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    path = tmp_path / "hw.onnx"
    onnx.save(model, path)
    bundle = split(path, tmp_path / "b", at=[["block.relu1", "stem.relu"], ["pool.out"]],
                   shapes={"image": [1, 3, 32, 32]})
    x = {"image": np.random.default_rng(7).standard_normal((2, 3, 48, 40)).astype(np.float32)}
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, x)[0]
    for s in bundle.manifest.splits:
        if s.edge_file:
            assert all(t.shape[2:] != (32, 32) for t in s.cut), s.cut  # symbolic, not the measuring size
            assert array_difference(reference, run_split(bundle, s.id, x)["logits"]).ok
