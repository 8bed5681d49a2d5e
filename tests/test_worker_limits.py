"""Request limits, model names and internal faults, against a real worker process.

The worker runs with a 1 MiB message limit, a 1 MiB decoded-size limit and JSON
logs, and serves, beside the demo CNN, a model that onnxruntime fails to run when its two
inputs do not broadcast: a real fault deep inside the library.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cloud.servicer import INTERNAL_MESSAGE
from splitpoint import wire
from splitpoint._proto import grpc_service_pb2 as pb
from splitpoint._proto import grpc_service_pb2_grpc as pb_grpc
from splitpoint.backends import load_session
from splitpoint.bundle import Bundle, segment_model_name

MiB = 1 << 20


@pytest.fixture(scope="module")
def fault_bundle(tmp_path_factory) -> Path:
    """out = Relu(a + b) with a[N,4], b[M,4]: valid requests with N != M make onnxruntime raise."""
    from partitioner import split

    d = tmp_path_factory.mktemp("fault")
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Relu", ["sum"], ["out"])],
        "fault",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["M", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, d / "fault.onnx")
    return split(d / "fault.onnx", d / "bundle", at=[["sum"]], shapes={"a": [2, 4], "b": [2, 4]}).root


@pytest.fixture(scope="module")
def limited(module_worker_factory, demo_bundle, fault_bundle):
    return module_worker_factory(demo_bundle, fault_bundle,
                                 args=["--max-message-mb", "1", "--max-decoded-mb", "1", "--log-format", "json"])


@pytest.fixture(scope="module")
def stub(limited):
    channel = grpc.insecure_channel(limited.address)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def cut(demo_bundle):
    """The demo bundle's two-tensor cut: its model name, a function making its tensors, and its local suffix."""
    bundle = Bundle(demo_bundle)
    split = bundle.manifest.split(bundle.manifest.default_split)
    prefix, suffix = load_session(bundle.path(split.edge_file)), load_session(bundle.path(split.cloud_file))

    def tensors(batch: int, seed: int) -> dict[str, np.ndarray]:
        image = {"image": np.random.default_rng(seed).standard_normal((batch, 3, 64, 64)).astype(np.float32)}
        return {n: a for n, a in {**image, **prefix.run(image)}.items() if n in split.sent_names}

    return segment_model_name(bundle.name, split.id), tensors, suffix, bundle.manifest.model_sha256


def _fault_request(rows_a: int, rows_b: int) -> pb.ModelInferRequest:
    ones = lambda n: np.ones((n, 4), np.float32)
    return wire.build_request("fault.cloud", {"a": ones(rows_a), "b": ones(rows_b)})[0].message()


def _bad_requests(cut) -> dict[str, tuple[Callable[[], pb.ModelInferRequest], grpc.StatusCode, str]]:
    """Each class of bad request, the status it must get and a text its message must hold."""
    name, tensors, _, sha = cut

    def zeros(batch: int) -> dict[str, np.ndarray]:
        return {n: np.zeros_like(a) for n, a in tensors(batch, 0).items()}

    def renamed(model: str) -> pb.ModelInferRequest:
        return wire.build_request(model, tensors(1, 0), "zstd")[0].message()

    def retyped() -> pb.ModelInferRequest:
        req = renamed(name)
        req.inputs[0].datatype = "INT64"
        return req

    return {
        # 2 MiB on the wire: gRPC itself refuses it
        "oversize-message": (lambda: wire.build_request(name, zeros(4), "raw")[0].message(),
                             grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
        # a few KiB on the wire, 2 MiB once decoded
        "decoded-over-limit": (lambda: wire.build_request(name, zeros(4), "zstd")[0].message(),
                               grpc.StatusCode.INVALID_ARGUMENT, "-byte limit"),
        "path-traversal": (lambda: renamed("../../etc/passwd"), grpc.StatusCode.NOT_FOUND, "../../etc/passwd"),
        "other-version": (lambda: wire.build_request(name, tensors(1, 0), "zstd", {wire.MODEL_SHA256: "0" * 64})[0].message(),
                          grpc.StatusCode.FAILED_PRECONDITION, "sha256"),
        "wrong-dtype": (retyped, grpc.StatusCode.INVALID_ARGUMENT, "datatype"),
        "runtime-fault": (lambda: _fault_request(3, 2), grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE),
    }


def test_each_bad_request_gets_its_status_while_good_clients_are_served(stub, cut):
    name, tensors, suffix, sha = cut
    stop, served, failures = threading.Event(), [0], []

    def good_client(seed: int) -> None:
        sent = tensors(1, seed)
        want = suffix.run(sent)["logits"]
        request = wire.build_request(name, sent, "zstd", {wire.MODEL_SHA256: sha})[0].message()
        while not stop.is_set():
            try:
                np.testing.assert_array_equal(wire.read_response(stub.ModelInfer(request, timeout=10))["logits"], want)
                served[0] += 1
            except Exception as e:  # collected, reported below
                failures.append(repr(e))

    clients = [threading.Thread(target=good_client, args=(seed,)) for seed in range(3)]
    for c in clients:
        c.start()
    try:
        for case, (make, code, needle) in _bad_requests(cut).items():
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as info:
                    stub.ModelInfer(make(), timeout=10)
                assert info.value.code() == code, (case, info.value.details())
                assert needle in info.value.details() and "Traceback" not in info.value.details(), case
    finally:
        stop.set()
        for c in clients:
            c.join()
    assert failures == [] and served[0] >= 3


def test_decoded_size_error_names_the_tensor(stub, cut):
    name, tensors, _, _ = cut
    zeros = {n: np.zeros_like(a) for n, a in tensors(4, 0).items()}
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(wire.build_request(name, zeros, "zstd")[0].message())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any(f"tensor {n!r}" in info.value.details() for n in zeros), info.value.details()


def test_model_names_cannot_reach_outside_the_repository(stub, cut, demo_bundle):
    name, tensors, _, _ = cut
    bundle = Bundle(demo_bundle)
    names = [
        "../../etc/passwd", "/etc/passwd", "..", "", f"{name}/../{name}", f"../{bundle.name}/model.onnx",
        str(bundle.model_path()), "cloud/" + Path(bundle.manifest.split(bundle.manifest.default_split).cloud_file).name,
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd", f"{name}\x00",
    ]
    request = wire.build_request(name, tensors(1, 0))[0].message()
    for bad in names:
        request.model_name = bad
        for call, message in ((stub.ModelInfer, request), (stub.ModelMetadata, pb.ModelMetadataRequest(name=bad))):
            with pytest.raises(grpc.RpcError) as info:
                call(message)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND, bad
        assert not stub.ModelReady(pb.ModelReadyRequest(name=bad)).ready


def test_runtime_fault_is_internal_to_the_client_and_traced_in_the_log(stub, limited):
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(_fault_request(5, 2))
    assert info.value.code() == grpc.StatusCode.INTERNAL and info.value.details() == INTERNAL_MESSAGE
    events = [json.loads(line) for line in limited.log_text().splitlines() if line.startswith("{")]
    fault = next(e for e in events if e.get("event") == "internal_error")  # one JSON line, traceback inside
    assert fault["model"] == "fault.cloud" and fault["level"] == "ERROR"
    assert "Traceback" in fault["exception"] and "broadcast" in fault["exception"]
    out = wire.read_response(stub.ModelInfer(_fault_request(2, 2)))["out"]  # the same model still serves
    np.testing.assert_array_equal(out, np.full((2, 4), 2, np.float32))
