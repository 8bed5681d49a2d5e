"""Fuzzing the worker's request validation over real gRPC, while a good client keeps being served.

One ``splitpoint serve`` process (1 MiB decoded-size limit) gets hypothesis-built
requests: valid requests for the demo bundle's segments with one to three faults
from a grammar (model name, version, sha parameter, tensor names, datatypes,
shapes, raw bytes, codec parameters of every type, typed contents, raw-content
counts, duplicated or missing inputs, unknown outputs), protobuf bytes that do
not parse, sent on a raw generic channel call, and streams mixing both. Every
answer must be OK with the outputs the local suffix computes from the same
request, or a client-side status (never INTERNAL or UNKNOWN) whose message
names what is wrong, never a traceback. Meanwhile three good clients call the
worker without pause and must get every answer right; afterwards the process
is still the same, alive, and its log holds no traceback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.servicer import MAX_DETAILS
from splitpoint import wire
from splitpoint._proto import grpc_service_pb2 as pb
from splitpoint._proto import grpc_service_pb2_grpc as pb_grpc
from splitpoint.backends import Session, load_session
from splitpoint.bundle import Bundle, segment_model_name

CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
}
SLACK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]  # good_clients: once per test
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=SLACK)
OIP = "/inference.GRPCInferenceService/"
NAMES = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)  # protobuf strings are UTF-8


@dataclass
class Segment:
    """One served cloud segment: its OIP name, cut tensors from a real image, and its local suffix."""

    name: str
    sent: dict[str, np.ndarray]
    suffix: Session


@dataclass
class GoodClients:
    served: int = 0
    failures: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def segments(demo_bundle) -> list[Segment]:
    bundle = Bundle(demo_bundle)
    image = {"image": np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    out = []
    for split in bundle.manifest.splits:
        if split.edge_file and split.cloud_file:
            available = {**image, **load_session(bundle.path(split.edge_file)).run(image)}
            out.append(Segment(segment_model_name(bundle.name, split.id), {n: available[n] for n in split.sent_names},
                               load_session(bundle.path(split.cloud_file))))
    assert len(out) == 2 and {len(s.sent) for s in out} == {1, 2}  # a one-tensor and a two-tensor cut
    return out


@pytest.fixture(scope="module")
def served(module_worker_factory, demo_bundle):
    return module_worker_factory(demo_bundle, args=["--max-decoded-mb", "1", "--max-message-mb", "8"])


@pytest.fixture(scope="module")
def channel(served) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served.address, options=[("grpc.max_send_message_length", 16 << 20)]) as ch:
        yield ch


@pytest.fixture(scope="module")
def sha(demo_bundle) -> str:
    return Bundle(demo_bundle).manifest.model_sha256


@pytest.fixture
def good_clients(served, segments, sha) -> Iterator[GoodClients]:
    """Three clients calling the worker with valid requests for the whole test, checking every answer."""
    stats, stop = GoodClients(), threading.Event()

    def run(seg: Segment) -> None:
        want = seg.suffix.run(seg.sent)
        request = wire.build_request(seg.name, seg.sent, "shuffle-zstd:1", {wire.MODEL_SHA256: sha})[0].message()
        with grpc.insecure_channel(served.address) as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            while not stop.is_set():
                try:
                    got = wire.read_response(stub.ModelInfer(request, timeout=20))
                    assert all(np.array_equal(got[k], v) for k, v in want.items())
                    stats.served += 1
                except Exception as e:  # collected and reported by the test
                    stats.failures.append(repr(e)[:300])

    threads = [threading.Thread(target=run, args=(segments[i % 2],), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    yield stats
    stop.set()
    for t in threads:
        t.join(timeout=30)
    pid = served.proc.pid
    assert served.proc.poll() is None and served.proc.pid == pid, "the worker died"
    assert stats.failures == [] and stats.served >= 3, (stats.served, stats.failures[:5])
    log = served.log_text()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


# -- the grammar of faults -------------------------------------------------------------------


Fault = Callable[[st.DataObject, pb.ModelInferRequest], list[str]]  # mutates; returns texts one of which the message holds


def _shown(value: str) -> str:
    """How the worker quotes a value from the request (repr), cut to what survives the message cap."""
    return repr(value)[:40]


def _pick(data: st.DataObject, req: pb.ModelInferRequest) -> int:
    return data.draw(st.integers(0, len(req.inputs) - 1))


def model_name(data, req):
    req.model_name = data.draw(st.one_of(
        NAMES, st.sampled_from(["../../etc/passwd", "/etc/passwd", "..", "democnn", req.model_name + "\x00"]),
        st.text("m", min_size=5000, max_size=30000)))
    return [_shown(req.model_name)]


def model_version(data, req):
    req.model_version = data.draw(NAMES.filter(lambda v: v not in ("", "1")))
    return [_shown(req.model_version)]


def sha_parameter(data, req):
    p = req.parameters[wire.MODEL_SHA256]
    kind = data.draw(st.sampled_from(["string_param", "int64_param", "bool_param", "double_param", "uint64_param"]))
    if kind == "string_param":
        p.string_param = data.draw(st.text("0123456789abcdef", max_size=70))
        return ["sha256"]
    setattr(p, kind, data.draw({"int64_param": st.integers(-(2**63), 2**63 - 1), "bool_param": st.booleans(),
                                "double_param": st.floats(), "uint64_param": st.integers(0, 2**64 - 1)}[kind]))
    return [wire.MODEL_SHA256]


def tensor_name(data, req):
    i = _pick(data, req)
    old, req.inputs[i].name = req.inputs[i].name, data.draw(NAMES)
    return [_shown(old), _shown(req.inputs[i].name)]


def datatype(data, req):
    i = _pick(data, req)
    req.inputs[i].datatype = data.draw(st.one_of(
        st.sampled_from(["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "BF16", "FP64", "BYTES", "fp32", ""]), NAMES))
    return [_shown(req.inputs[i].name)]


def shape(data, req):
    i = _pick(data, req)
    dims = data.draw(st.lists(st.one_of(
        st.integers(-3, 70), st.integers(-(2**63), 2**63 - 1), st.sampled_from([2**31, 2**32 + 1, 2**62, 2**63 - 1])),
        max_size=6))
    del req.inputs[i].shape[:]
    req.inputs[i].shape.extend(dims)
    return [_shown(req.inputs[i].name)]


def batch_overflow(data, req):
    i = _pick(data, req)  # the model's dynamic batch dimension: only the size limits stand in the way
    rows = data.draw(st.sampled_from([0, 2, 17, 2**31, 2**40, 2**62, 2**63 - 1]))
    if req.inputs[i].shape:
        req.inputs[i].shape[0] = rows
    else:
        req.inputs[i].shape.append(rows)
    return [_shown(req.inputs[i].name)]


def raw_bytes(data, req):
    i = _pick(data, req)
    raw = req.raw_input_contents[i]
    how = data.draw(st.sampled_from(["truncate", "extend", "flip", "replace"]))
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "extend":
        raw += data.draw(st.binary(min_size=1, max_size=64))
    elif how == "flip":
        at = data.draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1:]
    else:
        raw = data.draw(st.binary(max_size=256))
    req.raw_input_contents[i] = raw
    return [_shown(req.inputs[i].name)]


def codec_parameter(data, req):
    i = _pick(data, req)
    params = req.inputs[i].parameters
    kind = data.draw(st.sampled_from(["string_param", "int64_param", "bool_param", "double_param", "uint64_param", "drop"]))
    if kind == "drop":
        params.pop("splitpoint.codec", None)
    elif kind == "string_param":
        params["splitpoint.codec"].string_param = data.draw(st.one_of(
            NAMES, st.sampled_from(["raw", "zstd", "zstd:0", "zstd:23", "int8", "fp16+zstd", "int8-channel+shuffle-zstd"])))
    else:
        setattr(params["splitpoint.codec"], kind, data.draw(
            {"int64_param": st.integers(-5, 5), "bool_param": st.booleans(), "double_param": st.floats(),
             "uint64_param": st.integers(0, 2**64 - 1)}[kind]))
    return [_shown(req.inputs[i].name)]


def typed_contents(data, req):
    i = _pick(data, req)
    req.inputs[i].contents.fp32_contents.extend([1.0] * data.draw(st.integers(1, 64)))
    if data.draw(st.booleans()):  # OIP's typed form: the raw contents go
        req.ClearField("raw_input_contents")
    return [_shown(req.inputs[i].name)]


def raw_count(data, req):
    if data.draw(st.booleans()):
        req.raw_input_contents.append(data.draw(st.binary(max_size=32)))
    else:
        del req.raw_input_contents[_pick(data, req)]
    return [_shown(t.name) for t in req.inputs]


def duplicate_input(data, req):
    i = _pick(data, req)
    req.inputs.add().CopyFrom(req.inputs[i])
    req.raw_input_contents.append(req.raw_input_contents[i] if i < len(req.raw_input_contents) else b"")
    return [_shown(req.inputs[i].name)]


def missing_input(data, req):
    i = _pick(data, req)
    name = req.inputs[i].name
    del req.inputs[i]
    if i < len(req.raw_input_contents):
        del req.raw_input_contents[i]
    return [_shown(name)]


def unknown_output(data, req):
    req.outputs.add(name=data.draw(NAMES.filter(lambda n: n != "logits")))
    return [_shown(req.outputs[-1].name)]


def request_parameter(data, req):
    """Reserved parameters (priority, timeout, sequence_*) of any type and value, and unknown ones, which are ignored."""
    key = data.draw(st.sampled_from(["priority", "timeout", "sequence_id", "sequence_start", "sequence_end", "x.y"]))
    ints = st.one_of(st.integers(-(2**63), -1), st.just(0), st.integers(10**7, 2**63 - 1))  # no timeout that can expire
    uints = st.one_of(st.just(0), st.integers(10**7, 2**64 - 1))
    kind, values = data.draw(st.sampled_from([("string_param", NAMES), ("int64_param", ints), ("bool_param", st.booleans()),
                                               ("double_param", st.floats()), ("uint64_param", uints)]))
    setattr(req.parameters[key], kind, data.draw(values))
    return [] if key == "x.y" else [key]


# Applied in this order: the ones that change how many inputs or raw contents there are come last.
FAULTS: list[Fault] = [model_name, model_version, sha_parameter, unknown_output, request_parameter, tensor_name, datatype,
                       shape, batch_overflow, raw_bytes, codec_parameter, typed_contents, raw_count, duplicate_input,
                       missing_input]


def faulty_request(data: st.DataObject, segments: list[Segment], sha: str) -> tuple[pb.ModelInferRequest, list[str]]:
    seg = data.draw(st.sampled_from(segments))
    codec = data.draw(st.sampled_from(["raw", "zstd", "shuffle-zstd:1", "fp16+zstd", "int8"]))
    req = wire.build_request(seg.name, seg.sent, codec, {wire.MODEL_SHA256: sha})[0].message()
    culprits: list[str] = []
    for fault in sorted(data.draw(st.lists(st.sampled_from(FAULTS), min_size=1, max_size=3, unique=True)), key=FAULTS.index):
        if FAULTS.index(fault) < FAULTS.index(tensor_name) or len(req.inputs) == len(req.raw_input_contents) > 0:
            culprits += fault(data, req)
    return req, culprits


def check_answer(call: Callable[[], pb.ModelInferResponse], req: pb.ModelInferRequest, culprits: list[str],
                 segments: list[Segment]) -> None:
    """OK with the outputs the local suffix gives for the same request, or a clear client error naming a culprit."""
    try:
        response = call()
    except grpc.RpcError as e:
        message = e.details() or ""
        assert e.code() in CLIENT_ERRORS, (e.code(), message)
        assert message and "Traceback" not in message and len(message) <= MAX_DETAILS, message[:300]
        assert not culprits or any(c in message for c in culprits), (culprits, message[:300])
        return
    seg = next(s for s in segments if s.name == req.model_name)
    inputs = wire.read_request(req, seg.suffix.inputs)  # the worker accepted it: so must the wire layer
    want = seg.suffix.run(inputs)
    got = wire.read_response(response)
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k], equal_nan=True) for k in want)


# -- the tests ---------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_faulty_requests_get_a_clear_client_error_or_the_right_answer(data, channel, segments, sha, good_clients):
    req, culprits = faulty_request(data, segments, sha)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    check_answer(lambda: stub.ModelInfer(req, timeout=20), req, culprits, segments)


@FUZZ
@given(data=st.data())
def test_bytes_that_are_not_a_request_are_invalid_argument(data, channel, segments, sha, good_clients):
    """Random bytes, and serialized requests with bytes flipped or cut, on a raw generic call."""
    good = wire.build_request(segments[0].name, segments[0].sent, "zstd", {wire.MODEL_SHA256: sha})[0].to_bytes()
    raw = bytearray(data.draw(st.one_of(st.binary(max_size=2048), st.just(good))))
    for _ in range(data.draw(st.integers(0 if raw != good else 1, 4))):
        if raw and data.draw(st.booleans()):
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        else:
            del raw[data.draw(st.integers(0, len(raw))):]
    call = channel.unary_unary(OIP + "ModelInfer")
    try:
        answer = pb.ModelInferResponse.FromString(call(bytes(raw), timeout=20))
    except grpc.RpcError as e:
        assert e.code() in CLIENT_ERRORS, (e.code(), e.details())
        assert "Traceback" not in (e.details() or "")
        if e.code() == grpc.StatusCode.INVALID_ARGUMENT and "protobuf" in (e.details() or ""):
            assert e.details().startswith(OIP + "ModelInfer: the request is not a valid protobuf message")
    else:  # what still parses may be a valid request: then its answer must be right
        req = pb.ModelInferRequest.FromString(bytes(raw))
        check_answer(lambda: answer, req, [], segments)


def test_malformed_bytes_on_every_oip_method_are_invalid_argument(channel, good_clients):
    for method in ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"]:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(OIP + method)(b"\xff\xff\xff\xff", timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, info.value.details())
        assert method in info.value.details()
    stream = channel.stream_stream(OIP + "ModelStreamInfer")
    with pytest.raises(grpc.RpcError) as info:
        list(stream(iter([b"\x0a\xff\xff"]), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()


@settings(max_examples=25, deadline=None, suppress_health_check=SLACK)
@given(data=st.data())
def test_a_stream_answers_faulty_and_good_requests_in_order(data, channel, segments, sha, good_clients):
    """Each bad request in a stream gets its error in its place; the good ones around it their answers."""
    requests, culprits = [], []
    for i in range(data.draw(st.integers(2, 8))):
        if data.draw(st.booleans()):
            req, why = faulty_request(data, segments, sha)
        else:
            seg = data.draw(st.sampled_from(segments))
            req, why = wire.build_request(seg.name, seg.sent, "zstd", {wire.MODEL_SHA256: sha})[0].message(), []
        req.id = str(i)
        requests.append(req)
        culprits.append(why)
    answers = list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(requests), timeout=60))
    assert [a.infer_response.id for a in answers] == [r.id for r in requests]
    for answer, req, why in zip(answers, requests, culprits):
        if answer.error_message:
            assert "Traceback" not in answer.error_message and len(answer.error_message) <= MAX_DETAILS
            assert not why or any(c in answer.error_message for c in why), (why, answer.error_message[:300])
        else:
            check_answer(lambda a=answer: a.infer_response, req, [], segments)


@pytest.mark.parametrize("name", ["m" * 20000, "t" * 100000])
def test_huge_names_in_errors_are_cut_so_the_status_arrives(channel, segments, name):
    """Regression: a message echoing a 20 kB name exceeded the client's trailer limit: RESOURCE_EXHAUSTED."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    req = wire.build_request(segments[0].name, segments[0].sent)[0].message()
    req.inputs[0].name = name
    for call, code in [(lambda: stub.ModelInfer(req, timeout=10), grpc.StatusCode.INVALID_ARGUMENT),
                       (lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=10), grpc.StatusCode.NOT_FOUND)]:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == code and name[:100] in info.value.details(), info.value.details()[:200]
        assert len(info.value.details()) <= MAX_DETAILS


def test_typed_contents_are_refused_naming_the_tensor(channel, segments):
    """Regression: OIP's typed contents without raw contents got a message naming no tensor."""
    seg = next(s for s in segments if len(s.sent) == 2)
    req = wire.build_request(seg.name, seg.sent)[0].message()
    req.ClearField("raw_input_contents")
    for t, a in zip(req.inputs, seg.sent.values()):
        t.contents.fp32_contents.extend(a.reshape(-1).tolist())
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"tensor {req.inputs[0].name!r}: typed contents are not accepted" in info.value.details()
