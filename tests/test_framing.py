"""Hand-framed OIP messages are protobuf's own encoding: same bytes out, same message in, same refusals."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpoint import framing, wire
from splitpoint._proto import grpc_service_pb2 as pb
from splitpoint.bundle import TensorSpec

names = st.text(min_size=0, max_size=12)
params = st.dictionaries(st.text(max_size=8), st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=8)),
                         max_size=3)
raws = st.lists(st.binary(max_size=300), max_size=4)


@st.composite
def requests(draw) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=draw(names), model_version=draw(names), id=draw(names))
    wire.set_params(req.parameters, draw(params))
    contents = draw(raws)
    for i, data in enumerate(contents):
        req.inputs.add(name=f"t{i}", datatype="UINT8", shape=[len(data)])
        req.raw_input_contents.append(data)
    for name in draw(st.lists(names, max_size=2)):
        req.outputs.add(name=name)
    if draw(st.booleans()):  # typed contents travel in the header untouched
        req.inputs.add(name="typed", datatype="INT32", shape=[2]).contents.int_contents.extend([1, 2])
    return req


@st.composite
def responses(draw) -> pb.ModelInferResponse:
    resp = pb.ModelInferResponse(model_name=draw(names), id=draw(names))
    wire.set_params(resp.parameters, draw(params))
    for i, data in enumerate(draw(raws)):
        resp.outputs.add(name=f"o{i}", datatype="UINT8", shape=[len(data)])
        resp.raw_output_contents.append(data)
    return resp


def _same(framed: framing.Framed, message) -> None:
    assert framed.message() == message
    assert [bytes(r) for r in framed.raw] == list(getattr(message, message.DESCRIPTOR.fields_by_number[framed.raw_field].name))


@settings(max_examples=200, deadline=None)
@given(message=st.one_of(requests(), responses()))
def test_framed_bytes_are_protobufs_bytes(message):
    framed = framing.view(message)
    framed.header = type(message)()
    framed.header.CopyFrom(message)
    framed.header.ClearField(message.DESCRIPTOR.fields_by_number[framed.raw_field].name)
    data = framed.to_bytes()
    assert type(message).FromString(data) == message
    if len(message.parameters) < 2:  # map order is not fixed; otherwise protobuf writes fields in number order
        assert data == message.SerializeToString()
    assert framed.size == len(data)
    _same(framing.parse(data, type(message)), message)


@settings(max_examples=200, deadline=None)
@given(message=st.one_of(requests(), responses()), data=st.data())
def test_fields_in_any_order_parse_as_protobuf_parses_them(message, data):
    """Other peers may interleave the raw contents with the other fields; protobuf merges fields in any order."""
    raw_name = message.DESCRIPTOR.fields_by_number[framing.RAW_FIELD[type(message)]].name
    others, contents = [], []
    for field, value in message.ListFields():
        one = type(message)()
        if field.name == raw_name:
            for item in value:
                getattr(one, raw_name)[:] = [item]
                contents.append(one.SerializeToString())
        else:
            one.MergeFrom(message)
            for other in one.DESCRIPTOR.fields:
                if other.name != field.name:
                    one.ClearField(other.name)
            others.append(one.SerializeToString())
    # Where the raw contents go among the other fields is drawn; their own order is the tensors' order.
    kinds = data.draw(st.permutations([False] * len(others) + [True] * len(contents)))
    rest, raw = iter(others), iter(contents)
    blob = b"".join(next(raw) if is_raw else next(rest) for is_raw in kinds)
    _same(framing.parse(blob, type(message)), type(message).FromString(blob))


def _protobuf_reads(data: bytes, message_type) -> object:
    try:
        return message_type.FromString(data)
    except DecodeError:
        return DecodeError


@settings(max_examples=300, deadline=None)
@given(message=st.one_of(requests(), responses()), data=st.data())
def test_damaged_bytes_are_refused_exactly_when_protobuf_refuses_them(message, data):
    blob = bytearray(message.SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(len(blob) - 1, 0)))
        if kind == "flip" and blob:
            blob[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del blob[at:]
        else:
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=6))
    blob = bytes(blob)
    want = _protobuf_reads(blob, type(message))
    if want is DecodeError:
        with pytest.raises(DecodeError):
            framing.parse(blob, type(message))
    else:
        _same(framing.parse(blob, type(message)), want)


@given(data=st.binary(max_size=64))
def test_arbitrary_bytes_are_refused_exactly_when_protobuf_refuses_them(data):
    for message_type in (pb.ModelInferRequest, pb.ModelInferResponse):
        want = _protobuf_reads(data, message_type)
        if want is DecodeError:
            with pytest.raises(DecodeError):
                framing.parse(data, message_type)
        else:
            _same(framing.parse(data, message_type), want)


def test_groups_are_left_to_protobuf():
    """A group (wire types 3/4) is valid protobuf no OIP peer writes: the fast path hands it over."""
    message = pb.ModelInferRequest(model_name="m")
    message.raw_input_contents.append(b"abc")
    group = bytes([15 << 3 | 3, 8, 1, 15 << 3 | 4])  # field 15: start group, varint field 1 = 1, end group
    blob = message.SerializeToString() + group
    _same(framing.parse(blob, pb.ModelInferRequest), pb.ModelInferRequest.FromString(blob))


@settings(max_examples=100, deadline=None)
@given(response=responses(), error=st.text(max_size=20))
def test_stream_answers_round_trip(response, error):
    framed = framing.view(response)
    header = pb.ModelInferResponse()
    header.CopyFrom(response)
    header.ClearField("raw_output_contents")
    framed.header = header
    data = framing.stream_answer_bytes((error, framed))
    want = pb.ModelStreamInferResponse(error_message=error, infer_response=response)
    assert pb.ModelStreamInferResponse.FromString(data) == want
    got_error, got = framing.parse_stream_answer(want.SerializeToString())
    assert got_error == error
    _same(got, response)


def test_raw_tensors_are_viewed_not_copied():
    """The point of framing: a received tensor's bytes stay in the received buffer."""
    x = np.arange(1 << 16, dtype=np.float32)
    request, size = wire.build_request("m", {"x": x})
    assert size == x.nbytes and np.shares_memory(np.frombuffer(request.raw[0], np.uint8), x)  # not copied before sending
    data = request.to_bytes()
    parsed = framing.parse_request(data)
    view = np.frombuffer(parsed.raw[0], np.uint8)
    assert np.shares_memory(view, np.frombuffer(data, np.uint8))
    np.testing.assert_array_equal(wire.read_request(parsed, [TensorSpec("x", "float32", [1 << 16])])["x"], x)


def test_views_of_wider_items_are_framed_by_their_bytes():
    """A memoryview of float32 has a quarter as many items as bytes: the length prefix must count bytes."""
    x = np.linspace(-1, 1, 10, dtype=np.float32)
    framed = framing.Framed(pb.ModelInferResponse(id="a"), [memoryview(x)])
    back = pb.ModelInferResponse.FromString(framed.to_bytes())
    assert back.raw_output_contents[0] == x.tobytes()
    error, answer = framing.parse_stream_answer(framing.stream_answer_bytes(("", framed)))
    assert error == "" and bytes(answer.raw[0]) == x.tobytes() and answer.header.id == "a"
