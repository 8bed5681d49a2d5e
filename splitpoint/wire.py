"""Conversions between numpy tensors and Open Inference Protocol messages.

Only translation and validation live here; the codec does the byte work and
the servicer/client do the transport. Tensors always travel in
``raw_input_contents`` / ``raw_output_contents``; a tensor's ``datatype`` and
``shape`` describe the logical tensor and codec parameters say how its bytes
are encoded (none: plain OIP raw).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from splitpoint import codec as codec_mod
from splitpoint import defaults, dtypes, framing
from splitpoint._proto import grpc_service_pb2 as pb
from splitpoint.bundle import TensorSpec
from splitpoint.errors import WireError

# Request parameter: the sha256 of the model the sender's segments came from.
MODEL_SHA256 = "splitpoint.model_sha256"
# Response parameter: the worker's compute time for the request, in microseconds.
COMPUTE_US = "splitpoint.compute_us"
# Stream answer parameter: the gRPC status code name (e.g. "FAILED_PRECONDITION") of an answer that
# carries an error message. ModelStreamInfer answers have a message but no status of their own, and
# the edge must tell a fatal failure (version mismatch) from a passing one (overload).
STATUS = "splitpoint.status"

ParamValue = str | int | bool


def set_params(target: Any, params: Mapping[str, ParamValue]) -> None:
    """Copy python values into a protobuf ``map<string, InferParameter>``."""
    for key, value in params.items():
        p = target[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            p.int64_param = value
        elif isinstance(value, str):
            p.string_param = value
        else:
            raise WireError(f"parameter {key!r}: unsupported type {type(value).__name__}")


def get_params(source: Any) -> dict[str, ParamValue | float]:
    """Read a protobuf parameter map into python values (unset entries are skipped)."""
    out: dict[str, ParamValue | float] = {}
    for key, p in source.items():
        which = p.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(p, which)
    return out


def shape_matches(shape: Sequence[int], spec: TensorSpec) -> bool:
    """True when ``shape`` fits ``spec`` (symbolic or unknown dims match any size)."""
    if len(shape) != len(spec.shape):
        return False
    return all(not isinstance(d, int) or d < 0 or d == s for d, s in zip(spec.shape, shape))


def check_tensor(name: str, array: np.ndarray, spec: TensorSpec) -> None:
    """Raise WireError when ``array`` does not fit ``spec`` (dtype, rank, fixed dims)."""
    if array.dtype.name != spec.dtype:
        raise WireError(f"tensor {name!r}: expected dtype {spec.dtype}, got {array.dtype}")
    if not shape_matches(array.shape, spec):
        raise WireError(f"tensor {name!r}: expected shape {format_shape(spec.shape)}, got {list(array.shape)}")


def format_shape(shape: Sequence[Any]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _add_tensor(tensors: Any, raw: list[framing.Buffer], name: str, array: np.ndarray, codec: codec_mod.Codec) -> int:
    encoded = codec.encode(array, name=name)
    t = tensors.add()
    t.name = name
    t.datatype = dtypes.to_oip(array.dtype)
    t.shape.extend(array.shape)
    set_params(t.parameters, encoded.params)
    raw.append(encoded.data)
    return len(encoded.data)


def build_request(
    model_name: str,
    tensors: Mapping[str, np.ndarray],
    codec: str | codec_mod.Codec = "raw",
    params: Mapping[str, ParamValue] | None = None,
    request_id: str = "",
) -> tuple[framing.Framed[pb.ModelInferRequest], int]:
    """An OIP ModelInferRequest carrying ``tensors``, and its encoded payload size.

    Raw tensors are views of the arrays until the request is serialised
    (``to_bytes()``; ``message()`` gives a protobuf message for stubs and tools).
    """
    c = codec_mod.parse(codec)
    req = framing.Framed(pb.ModelInferRequest(model_name=model_name, id=request_id), [])
    set_params(req.header.parameters, params or {})
    size = sum(_add_tensor(req.header.inputs, req.raw, n, a, c) for n, a in tensors.items())
    return req, size


def build_response(
    request: pb.ModelInferRequest,
    outputs: Mapping[str, np.ndarray],
    params: Mapping[str, ParamValue] | None = None,
) -> framing.Framed[pb.ModelInferResponse]:
    """An OIP ModelInferResponse with raw outputs, answering ``request`` (its header is enough)."""
    wanted = [o.name for o in request.outputs]
    raw = codec_mod.parse("raw")
    resp = framing.Framed(
        pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id), []
    )
    set_params(resp.header.parameters, params or {})
    for name in wanted or list(outputs):
        _add_tensor(resp.header.outputs, resp.raw, name, outputs[name], raw)
    return resp


def _read_tensors(
    tensors: Sequence[Any], raw: Sequence[framing.Buffer], what: str, max_bytes: int, copy: bool = True
) -> dict[str, np.ndarray]:
    if len(raw) != len(tensors):
        typed = [t.name for t in tensors if t.HasField("contents")]
        if typed:
            raise WireError(f"tensor {typed[0]!r}: typed contents are not accepted; send every tensor's bytes raw")
        raise WireError(f"{what}: {len(tensors)} tensors {[t.name for t in tensors][:8]} but {len(raw)} raw contents "
                        "(every tensor must have raw contents, in order)")
    out: dict[str, np.ndarray] = {}
    budget = max_bytes  # for the whole message, not per tensor
    for t, data in zip(tensors, raw):
        if t.name in out:
            raise WireError(f"tensor {t.name!r} appears twice")
        if t.contents.ListFields():  # an empty contents message carries nothing: MLServer sends one beside raw outputs
            raise WireError(f"tensor {t.name!r}: typed contents given together with raw contents")
        try:
            dtype = dtypes.from_oip(t.datatype)
        except WireError as e:
            raise WireError(f"tensor {t.name!r}: {e}") from None
        out[t.name] = codec_mod.decode(
            data, get_params(t.parameters), dtype=dtype, shape=tuple(t.shape), name=t.name, max_bytes=budget, copy=copy
        )
        budget -= out[t.name].nbytes
    return out


def read_request(
    request: framing.Framed[pb.ModelInferRequest] | pb.ModelInferRequest,
    expected: Sequence[TensorSpec],
    max_bytes: int = defaults.MAX_DECODED_BYTES,
    copy: bool = True,
) -> dict[str, np.ndarray]:
    """Decode and validate a request's inputs against the model's input specs.

    ``max_bytes`` bounds the decoded size of all inputs together; ``copy=False``
    leaves raw tensors as read-only views of the request (see ``codec.decode``).
    """
    framed = request if isinstance(request, framing.Framed) else framing.view(request)
    request = framed.header
    by_name = {s.name: s for s in expected}
    for t in request.inputs:
        if t.name not in by_name:
            raise WireError(f"unexpected input tensor {t.name!r}; the model takes {sorted(by_name)}")
        spec = by_name[t.name]
        if t.datatype != dtypes.to_oip(spec.dtype):
            raise WireError(f"tensor {t.name!r}: expected datatype {dtypes.to_oip(spec.dtype)}, got {t.datatype!r}")
        if not shape_matches(tuple(t.shape), spec):
            raise WireError(f"tensor {t.name!r}: expected shape {format_shape(spec.shape)}, got {list(t.shape)}")
    missing = [n for n in by_name if n not in {t.name for t in request.inputs}]
    if missing:
        raise WireError(f"missing input tensor(s) {missing}")
    return _read_tensors(request.inputs, framed.raw, "request", max_bytes, copy)


def read_response(
    response: framing.Framed[pb.ModelInferResponse] | pb.ModelInferResponse,
    max_bytes: int = defaults.MAX_DECODED_BYTES,
) -> dict[str, np.ndarray]:
    """Decode a response's outputs."""
    framed = response if isinstance(response, framing.Framed) else framing.view(response)
    return _read_tensors(framed.header.outputs, framed.raw, "response", max_bytes)
