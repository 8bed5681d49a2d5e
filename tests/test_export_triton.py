"""`splitpoint export-triton`: the written repository read back with Triton's own ModelConfig and onnxruntime."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2 as mc

from cloud.triton import model_config
from splitpoint.bundle import MANIFEST, Bundle, TensorSpec, segment_model_name

ORT_TO_TRITON = {"tensor(float)": mc.TYPE_FP32, "tensor(int64)": mc.TYPE_INT64, "tensor(bool)": mc.TYPE_BOOL,
                 "tensor(float16)": mc.TYPE_FP16, "tensor(uint8)": mc.TYPE_UINT8}


def export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "splitpoint", "export-triton", *args],
                          capture_output=True, text=True, timeout=120)


def read_config(model_dir: Path) -> mc.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())


def check_model_file_matches_config(model_dir: Path, config: mc.ModelConfig) -> ort.InferenceSession:
    """The model file loads in onnxruntime and its tensors are the config's (batch dim prepended when batched)."""
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = [-1] if config.max_batch_size > 0 else []
    for declared, actual in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [t.name for t in declared] == [a.name for a in actual]
        for t, a in zip(declared, actual):
            assert t.data_type == ORT_TO_TRITON[a.type], t.name
            assert batch + list(t.dims) == [d if isinstance(d, int) else -1 for d in a.shape], t.name
    return session


@pytest.fixture(scope="module")
def repo(demo_bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    result = export(str(demo_bundle), "-o", str(out), "--batch-delay-ms", "0.5")
    assert result.returncode == 0, result.stderr
    return out


def test_one_model_per_cloud_segment_named_as_the_worker_names_it(repo, demo_bundle, worker):
    with tc.InferenceServerClient(worker.address) as client:
        served = {m["name"] for m in client.get_model_repository_index(as_json=True)["models"]}
        assert {p.name for p in repo.iterdir()} == served
        for model_dir in repo.iterdir():
            config = read_config(model_dir)
            assert config.name == model_dir.name and config.platform == "onnxruntime_onnx"
            assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")) == \
                ["1", "1/model.onnx", "config.pbtxt"]
            meta = client.get_model_metadata(config.name, as_json=True)
            # the worker's ModelMetadata is the config with the batch dimension put back
            for declared, described in ((config.input, meta["inputs"]), (config.output, meta["outputs"])):
                assert [(t.name, mc.DataType.Name(t.data_type), [-1, *t.dims]) for t in declared] == \
                    [(d["name"], "TYPE_" + d["datatype"], [int(s) for s in d["shape"]]) for d in described]


def test_batchable_segments_drop_the_batch_dim_and_get_dynamic_batching(repo, demo_bundle):
    b = Bundle(demo_bundle)
    for split in b.manifest.splits:
        if split.cloud_file is None:
            continue
        model_dir = repo / segment_model_name(b.name, split.id)
        config = read_config(model_dir)
        assert config.max_batch_size == 32
        assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 500
        assert all(t.data_type == mc.TYPE_FP32 for t in [*config.input, *config.output])
        assert [list(t.dims) for t in config.output] == [[10]]
        session = check_model_file_matches_config(model_dir, config)
        # the exported file computes what the bundle's segment computes
        rng = np.random.default_rng(0)
        feeds = {i.name: rng.standard_normal([3, *[d for d in i.shape[1:]]]).astype(np.float32)
                 for i in session.get_inputs()}
        want = ort.InferenceSession(str(b.path(split.cloud_file)), providers=["CPUExecutionProvider"]).run(None, feeds)
        np.testing.assert_array_equal(session.run(None, feeds)[0], want[0])


def _bundle_of(tmp_path: Path, graph: onnx.GraphProto, shapes: dict[str, list[int]], cut: str) -> Path:
    from partitioner import split

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / f"{graph.name}.onnx")
    return split(tmp_path / f"{graph.name}.onnx", tmp_path / graph.name, at=[[cut]], shapes=shapes).root


def test_segments_without_a_shared_batch_dim_get_max_batch_size_0_and_full_dims(tmp_path):
    """a[N,4] + b[M,4] (two independent dims) and a fixed [2,3] int64 model: Triton must not batch either."""
    independent = _bundle_of(tmp_path, helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Relu", ["sum"], ["out"])], "indep",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["M", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])]), {"a": [2, 4], "b": [2, 4]}, "sum")
    fixed = _bundle_of(tmp_path, helper.make_graph(
        [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Abs", ["n"], ["y"])], "fixed",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2, 3])]), {}, "n")
    repo = tmp_path / "repo"
    for bundle in (independent, fixed):
        assert export(str(bundle), "-o", str(repo), "--batch-delay-ms", "1").returncode == 0
    for name, dims, dtype in (("indep.sum", [[-1, 4]], mc.TYPE_FP32), ("fixed.n", [[2, 3]], mc.TYPE_INT64)):
        config = read_config(repo / name)
        assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
        assert [list(t.dims) for t in config.output] == [dims[0] if name == "fixed.n" else [-1, 4]]
        assert {t.data_type for t in [*config.input, *config.output]} == {dtype}
        check_model_file_matches_config(repo / name, config)
    assert {p.name for p in repo.iterdir()} == {"indep.sum", "indep.cloud", "fixed.n", "fixed.cloud"}


def test_external_weights_travel_with_the_model(demo_bundle, tmp_path):
    bundle = tmp_path / "extern"
    shutil.copytree(demo_bundle, bundle)
    segment = Bundle(bundle).path(Bundle(bundle).manifest.split("cloud").cloud_file)
    onnx.save_model(onnx.load(segment), segment, save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert export(str(bundle), "-o", str(tmp_path / "repo"), "--max-batch", "0").returncode == 0
    model_dir = tmp_path / "repo" / segment_model_name(Bundle(bundle).name, "cloud")
    assert (model_dir / "1" / "weights.bin").is_file()
    config = read_config(model_dir)
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [-1, 3, 64, 64]
    check_model_file_matches_config(model_dir, config)


def test_tflite_segment_is_refused_with_one_line(demo_bundle, tmp_path):
    bundle = tmp_path / "tfl"
    shutil.copytree(demo_bundle, bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["splits"][-1]["cloud_file"] = "cloud/suffix.tflite"
    (bundle / "cloud" / "suffix.tflite").write_bytes(b"TFL3")
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    out = export(str(bundle), "-o", str(tmp_path / "repo"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("error:") and "TFLite" in out.stderr and "cloud/suffix.tflite" in out.stderr
    assert not (tmp_path / "repo").exists()  # nothing written


def test_existing_model_directory_is_replaced_only_with_force(demo_bundle, tmp_path):
    repo = tmp_path / "repo"
    (repo / "other-model" / "1").mkdir(parents=True)
    assert export(str(demo_bundle), "-o", str(repo)).returncode == 0
    again = export(str(demo_bundle), "-o", str(repo))
    assert again.returncode == 2 and "--force" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert export(str(demo_bundle), "-o", str(repo), "--force", "--max-batch", "4").returncode == 0
    name = segment_model_name(Bundle(demo_bundle).name, "cloud")
    assert read_config(repo / name).max_batch_size == 4 and (repo / "other-model").is_dir()


def test_names_with_quotes_and_non_ascii_survive_the_text_format():
    odd = 'in "quoted" \\ päth\n'
    text = model_config('m"odel', [TensorSpec(odd, "float16", ("N", 2))], [TensorSpec("ok", "bool", ("N",))], 8)
    config = text_format.Parse(text, mc.ModelConfig())
    assert config.name == 'm"odel' and config.input[0].name == odd
    assert config.input[0].data_type == mc.TYPE_FP16 and list(config.input[0].dims) == [2]
    assert config.output[0].data_type == mc.TYPE_BOOL and list(config.output[0].dims) == []
