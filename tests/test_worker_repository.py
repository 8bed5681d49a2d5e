"""Serving directories of bundles, and the onnxruntime options of every model, against real worker processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc

from cloud.repository import SessionSettings
from splitpoint.backends import OrtSession, ort_providers
from splitpoint.bundle import MANIFEST, Bundle, segment_model_name
from splitpoint.errors import SplitpointError


def _renamed(demo_bundle: Path, target: Path, name: str) -> Path:
    """A copy of the demo bundle whose manifest names it ``name``."""
    shutil.copytree(demo_bundle, target)
    manifest = json.loads((target / MANIFEST).read_text())
    (target / MANIFEST).write_text(json.dumps(manifest | {"name": name}))
    return target


def _models(bundle: Path) -> set[str]:
    b = Bundle(bundle)
    return {segment_model_name(b.name, s.id) for s in b.manifest.splits if s.cloud_file}


def _serve_fails(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "splitpoint", "serve", *args, "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("error:")
    return out.stderr


def test_a_directory_serves_every_bundle_in_it_beside_explicit_ones(worker_factory, demo_bundle, tmp_path, image):
    repo = tmp_path / "repo"
    first, second = _renamed(demo_bundle, repo / "a", "cnn-a"), _renamed(demo_bundle, repo / "b", "cnn-b")
    (repo / "notes").mkdir()  # no manifest: not a bundle, skipped
    extra = _renamed(demo_bundle, tmp_path / "elsewhere", "cnn-c")
    w = worker_factory(repo, extra, first, args=["--threads", "1", "--graph-opt", "basic", "--providers", "cpu"])
    with tc.InferenceServerClient(w.address) as client:
        served = {m["name"] for m in client.get_model_repository_index(as_json=True)["models"]}
        assert served == _models(first) | _models(second) | _models(extra)  # `first` twice is served once
        x = tc.InferInput("image", list(image["image"].shape), "FP32")
        x.set_data_from_numpy(image["image"])
        got = client.infer("cnn-b.cloud", [x]).as_numpy("logits")
    # the same answer as a session with the same options (other levels fuse differently)
    local = OrtSession(Bundle(second).path(Bundle(second).manifest.split("cloud").cloud_file), 1, graph_opt="basic")
    np.testing.assert_array_equal(got, local.run(image)["logits"])
    log = w.log_text()
    assert "model cnn-a.cloud: onnxruntime on CPUExecutionProvider, graph optimisation basic, 1 intra-op threads" in log


def test_directory_problems_are_one_line_errors(demo_bundle, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert "empty" in _serve_fails(str(tmp_path / "empty")) and "manifest.json" in _serve_fails(str(tmp_path / "empty"))
    twins = tmp_path / "twins"
    _renamed(demo_bundle, twins / "one", "same")
    _renamed(demo_bundle, twins / "two", "same")
    assert "served twice" in _serve_fails(str(twins))
    assert "nope" in _serve_fails(str(tmp_path / "nope"))


def test_flag_problems_are_one_line_errors_naming_the_flag(demo_bundle):
    assert "--max-queue" in _serve_fails(str(demo_bundle), "--max-batch", "4", "--max-queue", "0")
    assert "--batch-delay-ms" in _serve_fails(str(demo_bundle), "--max-batch", "4", "--batch-delay-ms", "-1")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        message = _serve_fails(str(demo_bundle), "--providers", "cuda,cpu")
        assert "--providers" in message and "'cuda'" in message and "CPUExecutionProvider" in message


def test_one_session_wrapper_takes_every_option_never_spins_and_prefers_cuda(demo_bundle):
    path = Bundle(demo_bundle).model_path()
    session = SessionSettings(threads=1, graph_opt="basic").open(path)
    assert isinstance(session, OrtSession)
    options = session.options
    for entry in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert options.get_session_config_entry(entry) == "0"
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.intra_op_num_threads == 1
    available = ort.get_available_providers()
    want = (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]
    assert ort_providers(None) == want and session.providers == want
    assert ort_providers(["cpu"]) == ["CPUExecutionProvider"]
    assert OrtSession(path).providers == ["CPUExecutionProvider"]  # the edge's default: the CPU alone
    with pytest.raises(SplitpointError, match="--graph-opt.*'most'"):
        SessionSettings(graph_opt="most")
    with pytest.raises(SplitpointError, match="--providers.*'tpu'.*CPUExecutionProvider"):
        SessionSettings(providers=("tpu",))
