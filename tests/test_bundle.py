"""Bundle loading refuses anything malformed with one clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from splitpoint.bundle import MANIFEST, Bundle, file_sha256, segment_model_name, slug
from splitpoint.errors import BundleError


@pytest.fixture
def copy(demo_bundle, tmp_path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(demo_bundle, dst)
    return dst


def _edit(root: Path, change) -> None:
    m = json.loads((root / MANIFEST).read_text())
    change(m)
    (root / MANIFEST).write_text(json.dumps(m))


def test_valid_bundle_loads(demo_bundle):
    b = Bundle(demo_bundle)
    ids = [s.id for s in b.manifest.splits]
    assert "local" in ids and "cloud" in ids and b.manifest.default_split in ids
    assert file_sha256(b.model_path()) == b.manifest.model_sha256
    for inputs, outputs in b.golden_cases():
        assert set(inputs) == {"image"} and set(outputs) == {"logits"}


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda m: m.__setitem__("schema_version", 99), "schema_version 99"),
        (lambda m: m.pop("splits"), "malformed"),
        (lambda m: m["splits"][-1].__setitem__("cloud_file", "../../etc/passwd"), "outside the bundle"),
        (lambda m: m["splits"][-1].__setitem__("edge_file", "/etc/passwd"), "outside the bundle"),
        (lambda m: m["splits"][-1].__setitem__("cloud_file", "cloud/missing.onnx"), "missing"),
    ],
    ids=["version", "malformed", "traversal", "absolute", "missing-file"],
)
def test_bad_manifest(copy, change, needle):
    _edit(copy, change)
    with pytest.raises(BundleError, match=needle):
        Bundle(copy)


def test_not_json_and_not_a_bundle(copy, tmp_path):
    (copy / MANIFEST).write_text("{nope")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle(copy)
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle(tmp_path)
    with pytest.raises(BundleError, match="not a directory"):
        Bundle(tmp_path / "absent")


def test_slug_and_model_names():
    assert slug("/layer1/layer1.0/relu/Relu_output_0") == "layer1_layer1.0_relu_Relu_output_0"
    long = slug("x" * 200)
    assert len(long) <= 48 and long != slug("x" * 201)
    assert segment_model_name("democnn", "pool.out") == "democnn.pool.out"
