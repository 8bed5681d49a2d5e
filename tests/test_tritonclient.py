"""A real OIP client (tritonclient) runs the Open Inference Protocol conformance set against `splitpoint serve`.

One worker process serves four bundles: the demo CNN, a torch-exported
ResNet-like network cut across a skip connection by the partitioner, a small
graph with FP16, INT64 and BOOL tensors, and an MLP. The worker is gated
(tests/gated_worker.py), so a request can hold its only compute slot
(``--max-inflight 1``) for as long as a queue-timeout test needs.
Every answer is compared with local onnxruntime.
"""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as tc
from conftest import Gate, wait_for
from onnx import TensorProto, helper, numpy_helper
from test_worker_ops import Metrics
from tritonclient.utils import InferenceServerException

import splitpoint
from partitioner import inspect, split
from splitpoint import dtypes, wire
from splitpoint._proto import grpc_service_pb2_grpc as pb_grpc
from splitpoint.backends import load_session
from splitpoint.bundle import Bundle, segment_model_name
from splitpoint.compare import array_difference, difference
from testbed.demo import free_port
from testbed.models import mlp

zoo = pytest.importorskip("testbed.zoo")

SLOW = "slow.cloud"
SLOW_WIDTH = 512
BLOCKER_ROWS = 64


def _dtypes_model() -> onnx.ModelProto:
    """FP16, INT64 and BOOL tensors in and out, batch dimension dynamic."""
    nodes = [
        helper.make_node("Add", ["a", "a"], ["double"]),
        helper.make_node("Cast", ["double"], ["wide"], to=TensorProto.FLOAT),
        helper.make_node("Relu", ["wide"], ["level"]),
        helper.make_node("Where", ["mask", "ids", "zero"], ["picked"]),
        helper.make_node("Not", ["mask"], ["unmasked"]),
    ]
    graph = helper.make_graph(
        nodes, "dtypes",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT16, ["N", 4]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3]),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 3])],
        [helper.make_tensor_value_info("level", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("picked", TensorProto.INT64, ["N", 3]),
         helper.make_tensor_value_info("unmasked", TensorProto.BOOL, ["N", 3])],
        initializer=[numpy_helper.from_array(np.array(0, np.int64), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def bundles(demo_bundle, tmp_path_factory) -> dict[str, Bundle]:
    d = tmp_path_factory.mktemp("conformance")
    resnet = zoo.export_onnx(zoo.resnet_like(), d / "resnet.onnx", dynamo=False)
    skip = next(c for c in inspect(resnet).candidates if len(c.tensors) == 2)  # a residual block's two tensors
    onnx.save(_dtypes_model(), d / "dtypes.onnx")
    onnx.save(mlp(SLOW_WIDTH, 16, reduce_output=True), d / "slow.onnx")
    return {
        "demo": Bundle(demo_bundle),
        "resnet": split(resnet, d / "resnet", at=[skip.names]),
        "dtypes": split(d / "dtypes.onnx", d / "dtypes", at=[["wide"]], shapes={"a": [2, 4], "ids": [2, 3], "mask": [2, 3]}),
        "slow": split(d / "slow.onnx", d / "slow", at=[["r7"]], shapes={"x": [2, SLOW_WIDTH]}),
    }


@pytest.fixture(scope="module")
def gate(tmp_path_factory) -> Gate:
    return Gate(tmp_path_factory.mktemp("gate") / "closed")


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def worker(module_worker_factory, bundles, gate, metrics_port):
    return module_worker_factory(*(b.root for b in bundles.values()), gate=gate,
                                 args=["--threads", "1", "--max-inflight", "1", "--metrics-port", str(metrics_port)])


@pytest.fixture(scope="module")
def client(worker):
    c = tc.InferenceServerClient(worker.address)
    yield c
    c.close()


def _served(bundles: dict[str, Bundle]) -> set[str]:
    return {segment_model_name(b.name, s.id) for b in bundles.values() for s in b.manifest.splits if s.cloud_file}


def _inputs(tensors: dict[str, np.ndarray]) -> list[tc.InferInput]:
    inputs = []
    for name, array in tensors.items():
        x = tc.InferInput(name, list(array.shape), dtypes.to_oip(array.dtype))
        x.set_data_from_numpy(array)
        inputs.append(x)
    return inputs


def _dtype_sample(rows: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows)
    return {"a": rng.standard_normal((rows, 4)).astype(np.float16),
            "ids": rng.integers(-2**40, 2**40, (rows, 3)),
            "mask": rng.random((rows, 3)) > 0.5}


def _image(rows: int = 1, seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((rows, 3, 64, 64)).astype(np.float32)}


def _slow_rows(rows: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(rows).standard_normal((rows, SLOW_WIDTH)).astype(np.float32)}


def _status(info: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(info.value.status())


def test_liveness_readiness_and_server_metadata(client, bundles):
    assert client.is_server_live() and client.is_server_ready()
    for name in _served(bundles):
        assert client.is_model_ready(name) and client.is_model_ready(name, "1")
    assert not client.is_model_ready("resnet.nope")
    assert not client.is_model_ready("demo.cloud", "2")  # only version 1 exists
    assert client.get_server_metadata(as_json=True) == {"name": "splitpoint", "version": splitpoint.__version__}


def test_repository_index_lists_every_served_segment(client, bundles):
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {m["name"] for m in index} == _served(bundles)
    assert all(m["version"] == "1" and m["state"] == "READY" for m in index)


def test_model_metadata_uses_spec_datatypes_and_minus_one_for_dynamic_dims(client):
    meta = client.get_model_metadata("dtypes.cloud", as_json=True)
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "a", "datatype": "FP16", "shape": ["-1", "4"]},
                              {"name": "ids", "datatype": "INT64", "shape": ["-1", "3"]},
                              {"name": "mask", "datatype": "BOOL", "shape": ["-1", "3"]}]
    assert meta["outputs"] == [{"name": "level", "datatype": "FP32", "shape": ["-1", "4"]},
                               {"name": "picked", "datatype": "INT64", "shape": ["-1", "3"]},
                               {"name": "unmasked", "datatype": "BOOL", "shape": ["-1", "3"]}]
    resnet = client.get_model_metadata("resnet.cloud", as_json=True)
    assert resnet["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "3", "64", "64"]}]
    for bad in (lambda: client.get_model_metadata("nope"), lambda: client.get_model_metadata("dtypes.cloud", "2")):
        with pytest.raises(InferenceServerException) as info:
            bad()
        assert "NOT_FOUND" in _status(info)


def test_raw_tensors_of_every_datatype_come_back_equal_to_local(client, bundles):
    sample = _dtype_sample()
    want = load_session(bundles["dtypes"].model_path()).run(sample)
    result = client.infer("dtypes.cloud", _inputs(sample))
    for name, array in want.items():
        got = result.as_numpy(name)
        assert got.dtype == array.dtype
        np.testing.assert_array_equal(got, array)
    only = client.infer("dtypes.cloud", _inputs(sample), outputs=[tc.InferRequestedOutput("picked")])
    assert only.as_numpy("level") is None
    np.testing.assert_array_equal(only.as_numpy("picked"), want["picked"])


def test_resnet_split_across_a_skip_through_tritonclient_equals_local(client, bundles):
    b = bundles["resnet"]
    cut = next(s for s in b.manifest.splits if s.edge_file)
    assert len(cut.sent_names) == 2  # the skip connection crosses the cut beside the block's own path
    x = _image(rows=2)
    want = load_session(b.model_path()).run(x)
    sent = load_session(b.path(cut.edge_file)).run(x)
    split_answer = client.infer(segment_model_name(b.name, cut.id), _inputs({n: sent[n] for n in cut.sent_names}),
                                compression_algorithm="gzip")  # gRPC's own compression, as plain OIP clients use it
    whole_answer = client.infer(segment_model_name(b.name, "cloud"), _inputs(x))
    for result in (split_answer, whole_answer):
        assert difference(want, {"logits": result.as_numpy("logits")}).ok


def test_stream_answers_in_order_and_delivers_each_error_to_its_request(worker, bundles):
    sample = _dtype_sample()
    want = load_session(bundles["dtypes"].model_path()).run(sample)
    answers: queue.Queue = queue.Queue()
    bad_shape = {**sample, "mask": sample["mask"][:, :2]}
    with tc.InferenceServerClient(worker.address) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i in range(6):
            model = "nope" if i == 4 else "dtypes.cloud"
            client.async_stream_infer(model, _inputs(bad_shape if i == 2 else sample), request_id=str(i))
        got = [answers.get(timeout=60) for _ in range(6)]
        client.stop_stream()
    for i, (result, error) in enumerate(got):
        if i in (2, 4):
            assert result is None and error is not None
            assert ("'mask'" if i == 2 else "'nope' is not served") in error.message()
        else:
            assert error is None and result.get_response().id == str(i)
            np.testing.assert_array_equal(result.as_numpy("picked"), want["picked"])


@pytest.mark.parametrize("reserved", [
    {"priority": 3},
    {"timeout": 60_000_000},
    {"priority": 1, "timeout": 0},
    {"sequence_id": 7, "sequence_start": True},
    {"sequence_id": 7},
    {"sequence_id": "session-1", "sequence_end": True},
], ids=["priority", "timeout", "no-timeout", "sequence-start", "sequence-continue", "sequence-end-string-id"])
def test_reserved_parameters_are_accepted_as_triton_accepts_them(client, bundles, reserved):
    """Triton answers these on a model without priority levels or sequence batching as if they were absent:
    the model keeps no state, so a request's answer is the same inside a sequence or not."""
    sample = _dtype_sample()
    result = client.infer("dtypes.cloud", _inputs(sample), **reserved)
    np.testing.assert_array_equal(result.as_numpy("picked"), load_session(bundles["dtypes"].model_path()).run(sample)["picked"])


@pytest.mark.parametrize("key, value", [
    ("timeout", "soon"), ("timeout", -5), ("priority", -1), ("priority", True),
    ("sequence_start", 1), ("sequence_id", False),
])
def test_reserved_parameters_of_the_wrong_type_or_sign_name_the_parameter(worker, key, value):
    """tritonclient cannot send these; other OIP clients can. Triton refuses the same ones, except a negative
    timeout, which it takes as unsigned."""
    request = wire.build_request("dtypes.cloud", _dtype_sample(), params={key: value})[0].message()
    with grpc.insecure_channel(worker.address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert repr(key) in info.value.details()


def test_timeout_is_a_queue_deadline_answered_unavailable_uncomputed(client, bundles, gate, metrics_port):
    """Like Triton's queue timeout: a request still waiting for compute when its ``timeout`` (µs) passes
    is dropped and answered UNAVAILABLE ("request timeout expired"); one without a timeout waits its turn."""
    small = _slow_rows(2)
    want = load_session(bundles["slow"].model_path()).run(small)["score"]
    computed = lambda: Metrics(metrics_port)("splitpoint_worker_compute_duration_seconds_count", model=SLOW)
    before = computed()
    with ThreadPoolExecutor(2) as pool:
        gate.close()
        try:
            blocker = pool.submit(client.infer, SLOW, _inputs(_slow_rows(BLOCKER_ROWS)))
            wait_for(lambda: Metrics(metrics_port)("splitpoint_worker_inflight_requests") == 1)
            with pytest.raises(InferenceServerException) as info:  # answered while the slot is still held
                client.infer(SLOW, _inputs(small), timeout=50_000)
            assert "UNAVAILABLE" in str(info.value.status()) and "timeout expired" in info.value.message()
            patient = pool.submit(client.infer, SLOW, _inputs(small))  # no timeout: answered after the blocker
            wait_for(lambda: Metrics(metrics_port)("splitpoint_worker_queue_depth") == 1)
            assert not blocker.done() and not patient.done()
        finally:
            gate.open()
        assert blocker.result(timeout=120).as_numpy("score").shape == (BLOCKER_ROWS,)
        assert array_difference(want, patient.result(timeout=120).as_numpy("score")).ok
    assert computed() - before == 2  # the blocker and the patient one; the one that timed out was never run


def test_unknown_model_error_reaches_tritonclient(client):
    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", _inputs(_image()))
    assert "NOT_FOUND" in _status(info) and "resnet.cloud" in info.value.message()


def test_demo_bundle_full_model_with_raw_tensors(client, bundles, image):
    b = bundles["demo"]
    result = client.infer(segment_model_name(b.name, "cloud"), _inputs(image), outputs=[tc.InferRequestedOutput("logits")])
    np.testing.assert_array_equal(result.as_numpy("logits"), load_session(b.model_path()).run(image)["logits"])

