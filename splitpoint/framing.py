"""OIP messages on the wire with their tensor bytes copied once, not four times.

Python protobuf copies a bytes field when it is set, again when the message is
serialised, and again when it is read back; at the MB sizes of a cut tensor
those copies cost more than the gRPC call itself. So the inference messages
are framed here: the small fields (names, shapes, parameters) go through
protobuf as usual, and the raw tensor contents are joined onto the serialised
header in one copy when sending and viewed in place in the received buffer when
reading. The bytes are protobuf's own encoding of the same message (a repeated
bytes field is a run of tag, length, bytes), so any OIP peer reads and writes
them, and protobuf itself parses any message that the fast path does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import DecodeError, Message

from splitpoint._proto import grpc_service_pb2 as pb

M = TypeVar("M", pb.ModelInferRequest, pb.ModelInferResponse)
Buffer = bytes | memoryview

# Protobuf wire types (https://protobuf.dev/programming-guides/encoding/).
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5


def _number(message: type[Message], field: str) -> int:
    return message.DESCRIPTOR.fields_by_name[field].number


# The field of each message that holds the tensors' bytes.
RAW_FIELD = {
    pb.ModelInferRequest: _number(pb.ModelInferRequest, "raw_input_contents"),
    pb.ModelInferResponse: _number(pb.ModelInferResponse, "raw_output_contents"),
}
_STREAM_ANSWER = _number(pb.ModelStreamInferResponse, "infer_response")


@dataclass
class Framed(Generic[M]):
    """An inference request or response: ``header`` holds every field but the raw
    contents, ``raw`` the tensors' bytes in order (views, when it was received)."""

    header: M
    raw: list[Buffer]
    size: int = 0  # bytes on the wire, once sent or received

    @property
    def raw_field(self) -> int:
        return RAW_FIELD[type(self.header)]

    def parts(self) -> list[Buffer]:
        """The message's encoding in pieces; ``b"".join`` of them is the whole message."""
        tag = _varint(self.raw_field << 3 | _LEN)
        out: list[Buffer] = [self.header.SerializeToString()]
        for data in self.raw:
            out += [tag, _varint(_nbytes(data)), data]
        return out

    def to_bytes(self) -> bytes:
        data = b"".join(self.parts())
        self.size = len(data)
        return data

    def message(self) -> M:
        """The whole protobuf message (copies the tensors' bytes: for tools and tests, not the data path)."""
        whole = type(self.header)()
        whole.CopyFrom(self.header)
        getattr(whole, whole.DESCRIPTOR.fields_by_number[self.raw_field].name).extend(bytes(r) for r in self.raw)
        return whole


def view(message: M) -> Framed[M]:
    """A whole protobuf message seen as a Framed one (its raw contents stay where they are)."""
    raw_name = message.DESCRIPTOR.fields_by_number[RAW_FIELD[type(message)]].name
    return Framed(message, list(getattr(message, raw_name)))


def parse(data: Buffer, message: type[M]) -> Framed[M]:
    """Read a ``message`` from its wire bytes, viewing the raw contents in ``data`` without copying.

    Raises DecodeError for bytes that are not a valid message, as protobuf does.
    """
    buf = memoryview(data).cast("B")
    try:
        header, raw = _separate(buf, RAW_FIELD[message])
    except _Unusual:  # groups: valid but never written by OIP peers; protobuf reads them
        out = _unframed(message.FromString(bytes(buf)))
    else:
        out = Framed(message.FromString(b"".join(header)), list(raw))
    out.size = len(buf)
    return out


def parse_request(data: bytes) -> Framed[pb.ModelInferRequest]:
    return parse(data, pb.ModelInferRequest)


def parse_response(data: bytes) -> Framed[pb.ModelInferResponse]:
    return parse(data, pb.ModelInferResponse)


def stream_answer_bytes(answer: tuple[str, Framed[pb.ModelInferResponse]]) -> bytes:
    """A ``ModelStreamInferResponse`` (error message, response) in one copy of the tensors' bytes."""
    error_message, response = answer
    inner = response.parts()
    inner_size = sum(map(_nbytes, inner))
    outer = pb.ModelStreamInferResponse(error_message=error_message).SerializeToString()
    return b"".join([outer, _varint(_STREAM_ANSWER << 3 | _LEN), _varint(inner_size), *inner])


def parse_stream_answer(data: bytes) -> tuple[str, Framed[pb.ModelInferResponse]]:
    """The error message and response of a ``ModelStreamInferResponse``, the tensors viewed in place."""
    buf = memoryview(data).cast("B")
    try:
        rest, answers = _separate(buf, _STREAM_ANSWER)
    except _Unusual:
        answers = []
    if len(answers) != 1:  # none, several (protobuf merges them) or groups: let protobuf read it all
        whole = pb.ModelStreamInferResponse.FromString(bytes(buf))
        return whole.error_message, _unframed(whole.infer_response)
    outer = pb.ModelStreamInferResponse.FromString(b"".join(rest))
    return outer.error_message, parse(answers[0], pb.ModelInferResponse)


def _unframed(message: M) -> Framed[M]:
    """A message protobuf parsed whole, its raw contents moved out of the header."""
    out = view(message)
    out.header.ClearField(message.DESCRIPTOR.fields_by_number[out.raw_field].name)
    return out


def _separate(buf: memoryview, field: int) -> tuple[list[memoryview], list[memoryview]]:
    """The encodings of all other fields, and the values of length-delimited ``field``, in order.

    ``field`` with another wire type stays with the others: protobuf keeps it as an unknown field.
    """
    others: list[memoryview] = []
    values: list[memoryview] = []
    for number, wire_type, start, value, end in _fields(buf):
        if number == field and wire_type == _LEN:
            values.append(buf[value:end])
        else:
            others.append(buf[start:end])
    return others, values


def _nbytes(data: Buffer) -> int:
    """Bytes in ``data`` (``len`` of a memoryview counts its items, which may be wider than a byte)."""
    return data.nbytes if isinstance(data, memoryview) else len(data)


class _Unusual(Exception):
    """A valid encoding the fast path leaves to protobuf."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(pos, min(pos + 10, len(buf))):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise DecodeError("truncated or overlong varint")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """(number, wire type, start of the tag, start of the value, end) of each top-level field."""
    pos, end = 0, len(buf)
    while pos < end:
        key, value = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        if wire_type == _VARINT:
            _, stop = _read_varint(buf, value)
        elif wire_type == _I64:
            stop = value + 8
        elif wire_type == _I32:
            stop = value + 4
        elif wire_type == _LEN:
            length, value = _read_varint(buf, value)
            stop = value + length
        elif wire_type in (_SGROUP, _EGROUP):
            raise _Unusual()
        else:
            raise DecodeError(f"invalid wire type {wire_type}")
        if stop > end:
            raise DecodeError("truncated message")
        yield number, wire_type, pos, value, stop
        pos = stop
