"""The worker as a real separate process over real gRPC on loopback."""

from __future__ import annotations

import signal
import subprocess
import sys

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitpoint import wire
from splitpoint._proto import grpc_service_pb2 as pb
from splitpoint._proto import grpc_service_pb2_grpc as pb_grpc
from splitpoint.backends import load_session
from splitpoint.bundle import Bundle, health_service, segment_model_name
from testbed.demo import CUT, free_port


@pytest.fixture(scope="module")
def stub(worker):
    channel = grpc.insecure_channel(worker.address, options=[("grpc.max_receive_message_length", 64 << 20)])
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def bundle(demo_bundle) -> Bundle:
    return Bundle(demo_bundle)


@pytest.fixture(scope="module")
def cut_split(bundle):
    return bundle.manifest.split(bundle.manifest.default_split)


def _sent(bundle: Bundle, split, image) -> dict[str, np.ndarray]:
    prefix = load_session(bundle.path(split.edge_file))
    available = {**image, **prefix.run(image)}
    return {n: available[n] for n in split.sent_names}


def _request(bundle, split, sent, codec="zstd", sha=None):
    req, _ = wire.build_request(
        segment_model_name(bundle.name, split.id), sent, codec,
        {wire.MODEL_SHA256: sha or bundle.manifest.model_sha256},
    )
    return req.message()


def test_liveness_readiness_and_metadata(stub, bundle, cut_split):
    name = segment_model_name(bundle.name, cut_split.id)
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name=name)).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready
    assert stub.ServerMetadata(pb.ServerMetadataRequest()).name == "splitpoint"
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=name))
    assert {t.name for t in meta.inputs} == set(CUT)
    for t in meta.inputs:
        assert t.datatype == "FP32" and t.shape[0] == -1 and len(t.shape) == 4  # dynamic batch stays dynamic
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("logits", "FP32", [-1, 10])]
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
    assert {m.name for m in index.models} == {segment_model_name(bundle.name, s.id) for s in bundle.manifest.splits
                                             if s.cloud_file}


def test_health_service_reports_serving(worker, bundle, cut_split):
    with grpc.insecure_channel(worker.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        name = segment_model_name(bundle.name, cut_split.id)
        for service in ("", name, health_service(name, bundle.manifest.model_sha256)):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
                health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:  # another version of the model is not served here
            health.Check(health_pb2.HealthCheckRequest(service=health_service(name, "0" * 64)))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_infer_matches_local_suffix_and_reports_compute_time(stub, bundle, cut_split, image, codec):
    sent = _sent(bundle, cut_split, image)
    resp = stub.ModelInfer(_request(bundle, cut_split, sent, codec))
    got = wire.read_response(resp)
    want = load_session(bundle.path(cut_split.cloud_file)).run(sent)
    np.testing.assert_array_equal(got["logits"], want["logits"])
    assert len(resp.raw_output_contents) == 1 and not resp.outputs[0].HasField("contents")
    compute_us = wire.get_params(resp.parameters)[wire.COMPUTE_US]
    assert isinstance(compute_us, int) and compute_us > 0


def test_cloud_split_serves_the_full_model(stub, bundle, image):
    full = load_session(bundle.model_path()).run(image)
    resp = stub.ModelInfer(_request(bundle, bundle.manifest.split("cloud"), image))
    np.testing.assert_array_equal(wire.read_response(resp)["logits"], full["logits"])


def _status(stub, req) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(req)
    return info.value


def test_unknown_model_is_not_found(stub, bundle, cut_split, image):
    req = _request(bundle, cut_split, _sent(bundle, cut_split, image))
    req.model_name = "nope.s1"
    err = _status(stub, req)
    assert err.code() == grpc.StatusCode.NOT_FOUND and "nope.s1" in err.details()


def test_other_model_version_is_failed_precondition(stub, bundle, cut_split, image):
    err = _status(stub, _request(bundle, cut_split, _sent(bundle, cut_split, image), sha="0" * 64))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "sha256" in err.details()


FIRST = "{first}"  # stands for the name of the request's first tensor


@pytest.mark.parametrize(
    "corrupt, needles",
    [
        (lambda r: setattr(r.inputs[0], "datatype", "INT64"), [FIRST, "datatype"]),
        (lambda r: r.inputs[0].shape.__setitem__(1, 7), [FIRST, "shape"]),
        (lambda r: r.raw_input_contents.__setitem__(0, r.raw_input_contents[0][:-3]), [FIRST]),
        (lambda r: r.inputs[0].parameters["splitpoint.codec"].__setattr__("string_param", "lzma"), [FIRST]),
        (lambda r: r.inputs[0].parameters["splitpoint.codec"].__setattr__("int64_param", 3), [FIRST]),
        (lambda r: setattr(r.inputs[0], "name", "not_a_tensor"), ["not_a_tensor"]),
        (lambda r: (r.inputs.pop(), r.raw_input_contents.pop()), ["missing"]),
        (lambda r: r.raw_input_contents.append(b"x"), ["raw contents"]),
    ],
    ids=["dtype", "shape", "bytes", "codec", "codec-type", "name", "missing", "extra-raw"],
)
def test_bad_requests_are_invalid_argument_naming_the_tensor(stub, bundle, cut_split, image, corrupt, needles):
    req = _request(bundle, cut_split, _sent(bundle, cut_split, image), "zstd")
    first = req.inputs[0].name
    corrupt(req)
    err = _status(stub, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    for needle in needles:
        assert needle.format(first=first) in err.details()
    assert "Traceback" not in err.details()


def test_worker_keeps_serving_after_errors(stub, bundle, cut_split, image):
    sent = _sent(bundle, cut_split, image)
    for _ in range(3):
        bad = _request(bundle, cut_split, sent)
        bad.inputs[0].datatype = "BOOL"
        _status(stub, bad)
    assert wire.read_response(stub.ModelInfer(_request(bundle, cut_split, sent)))["logits"].shape == (1, 10)


def test_stream_infer_answers_each_request_in_order(stub, bundle, cut_split):
    rng = np.random.default_rng(3)
    images = [{"image": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)} for _ in range(4)]
    reqs = []
    for i, img in enumerate(images):
        r = _request(bundle, cut_split, _sent(bundle, cut_split, img))
        r.id = str(i)
        reqs.append(r)
    bad = _request(bundle, cut_split, _sent(bundle, cut_split, images[0]))
    bad.model_name, bad.id = "nope", "bad"
    reqs.insert(2, bad)
    answers = list(stub.ModelStreamInfer(iter(reqs)))
    assert [a.infer_response.id for a in answers] == ["0", "1", "bad", "2", "3"]
    assert "nope" in answers[2].error_message
    suffix = load_session(bundle.path(cut_split.cloud_file))
    for a, img in zip([a for a in answers if not a.error_message], images):
        want = suffix.run(_sent(bundle, cut_split, img))["logits"]
        np.testing.assert_array_equal(wire.read_response(a.infer_response)["logits"], want)


def test_large_activation_passes_message_limits(worker_factory, tmp_path):
    """A 24 MiB cut tensor (over gRPC's 4 MiB default) travels both ways."""
    from partitioner import split
    from testbed.models import save_demo_cnn

    model = save_demo_cnn(tmp_path / "big.onnx", size=192)
    out = split(model, tmp_path / "big", at=[["stem.relu"]], shapes={"image": [12, 3, 192, 192]}, name="big")
    w = worker_factory(out.root)
    sp = out.manifest.split(out.manifest.default_split)
    x = {"image": np.random.default_rng(0).standard_normal((12, 3, 192, 192)).astype(np.float32)}
    sent = _sent(out, sp, x)
    assert sum(a.nbytes for a in sent.values()) > 20 << 20
    with grpc.insecure_channel(w.address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        resp = pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(_request(out, sp, sent, "raw"))
    assert wire.read_response(resp)["logits"].shape == (12, 10)


def test_start_line_and_clean_stop_on_sigterm(demo_bundle, tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "splitpoint", "serve", str(demo_bundle), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in line and "serving" in line and "democnn" in line, line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()


def test_serve_refuses_bad_bundle_with_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "splitpoint", "serve", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error:") and len(out.stderr.strip().splitlines()) == 1, out.stderr
