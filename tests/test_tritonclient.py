"""A real OIP client (tritonclient) talks to `splitpoint serve` unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from splitpoint.backends import load_session
from splitpoint.bundle import Bundle, segment_model_name


@pytest.fixture(scope="module")
def client(worker):
    c = tc.InferenceServerClient(worker.address)
    yield c
    c.close()


def test_liveness_metadata_and_index(client, demo_bundle):
    b = Bundle(demo_bundle)
    name = segment_model_name(b.name, "cloud")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    meta = client.get_model_metadata(name, as_json=True)
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": ["-1", "3", "64", "64"]}]
    index = client.get_model_repository_index(as_json=True)
    assert name in {m["name"] for m in index["models"]}


def test_infer_full_model_with_raw_tensors(client, demo_bundle, image):
    b = Bundle(demo_bundle)
    x = tc.InferInput("image", list(image["image"].shape), "FP32")
    x.set_data_from_numpy(image["image"])
    result = client.infer(segment_model_name(b.name, "cloud"), [x], outputs=[tc.InferRequestedOutput("logits")])
    want = load_session(b.model_path()).run(image)["logits"]
    np.testing.assert_array_equal(result.as_numpy("logits"), want)


def test_unknown_model_error_reaches_tritonclient(client):
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert "StatusCode.NOT_FOUND" in str(info.value.status())
