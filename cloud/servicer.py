"""gRPC servicer for the Open Inference Protocol: translation only.

Messages become numpy tensors (splitpoint.wire), the core does the work, and
errors become the gRPC status the protocol expects. Clients never see a stack
trace; unexpected failures are logged here and answered with INTERNAL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

import splitpoint
from cloud.admission import DeadlineExpired, Overloaded
from cloud.core import (
    VERSION,
    InferenceCore,
    InvalidParameter,
    ModelNotFound,
    TimeoutExpired,
    VersionMismatch,
    queue_timeout,
)
from cloud.metrics import UNKNOWN_MODEL, WorkerMetrics
from splitpoint import dtypes, framing, wire
from splitpoint._proto import grpc_service_pb2 as pb
from splitpoint._proto import grpc_service_pb2_grpc as pb_grpc
from splitpoint.errors import CodecError, WireError
from splitpoint.framing import Framed

log = logging.getLogger("splitpoint.cloud")

PLATFORM = "onnxruntime_onnx"
INTERNAL_MESSAGE = "internal error (logged on the worker)"
# grpc reports a call without a deadline as one this far away (or more), or as None.
_NO_DEADLINE_S = 1e8

_STATUS = [
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (VersionMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (WireError, grpc.StatusCode.INVALID_ARGUMENT),
    (CodecError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidParameter, grpc.StatusCode.INVALID_ARGUMENT),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TimeoutExpired, grpc.StatusCode.UNAVAILABLE),  # Triton's answer to a request whose timeout passed in its queue
    (DeadlineExpired, grpc.StatusCode.DEADLINE_EXCEEDED),
]


# Status details travel in HTTP/2 trailers, which clients cap (8 KiB soft, 16 KiB hard by default): a
# message echoing a huge name from the request would reach the client as RESOURCE_EXHAUSTED instead.
MAX_DETAILS = 1024


def details(message: str) -> str:
    """``message`` cut to MAX_DETAILS characters, so the status reaches the client intact."""
    return message if len(message) <= MAX_DETAILS else message[: MAX_DETAILS - 20] + f"... ({len(message)} chars)"


def _status_of(e: Exception, model: str) -> tuple[grpc.StatusCode, str]:
    for kind, code in _STATUS:
        if isinstance(e, kind):
            return code, details(str(e))
    log.exception("internal error serving model %s", model, extra={"event": "internal_error", "model": model})
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def _deadline(context: grpc.ServicerContext) -> float | None:
    """The call's deadline as a ``time.monotonic()`` instant, or None when the client set none."""
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_S:
        return None
    return time.monotonic() + remaining


def _dims(shape) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: InferenceCore, metrics: WorkerMetrics, max_decoded_bytes: int):
        self.core = core
        self.metrics = metrics
        self.max_decoded_bytes = max_decoded_bytes

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        try:
            self.core.segment(request.name, request.version)
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="splitpoint", version=splitpoint.__version__)

    def ModelMetadata(self, request, context):
        try:
            seg = self.core.segment(request.name, request.version)
        except ModelNotFound as e:
            context.abort(grpc.StatusCode.NOT_FOUND, details(str(e)))
        meta = pb.ModelMetadataResponse(name=seg.name, versions=[VERSION], platform=PLATFORM)
        for specs, target in ((seg.session.inputs, meta.inputs), (seg.session.outputs, meta.outputs)):
            for s in specs:
                target.add(name=s.name, datatype=dtypes.to_oip(s.dtype), shape=_dims(s.shape))
        return meta

    def RepositoryIndex(self, request, context):
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(name=n, version=VERSION, state="READY")
                    for n in sorted(self.core.segments)]
        )

    def _infer(self, framed: Framed[pb.ModelInferRequest], deadline: float | None) -> Framed[pb.ModelInferResponse]:
        request = framed.header
        seg = self.core.segment(request.model_name, request.model_version)
        params = wire.get_params(request.parameters)
        sha = params.get(wire.MODEL_SHA256)
        if sha is not None and not isinstance(sha, str):
            raise WireError(f"parameter {wire.MODEL_SHA256!r} must be a string")
        self.core.check_version(seg, sha)
        timeout_s = queue_timeout(params)
        unknown = [o.name for o in request.outputs if o.name not in {s.name for s in seg.session.outputs}]
        if unknown:
            raise WireError(f"requested output(s) {unknown} do not exist in model {seg.name!r}")

        def decode() -> dict[str, np.ndarray]:
            # Raw inputs stay views of the received message: the session only reads them.
            inputs = wire.read_request(framed, seg.session.inputs, self.max_decoded_bytes, copy=False)
            received = self.metrics.received_bytes
            received.labels(model=seg.name, form="encoded").inc(sum(map(len, framed.raw)))
            received.labels(model=seg.name, form="raw").inc(sum(a.nbytes for a in inputs.values()))
            return inputs

        result = self.core.infer(seg, decode, deadline, timeout_s)
        return wire.build_response(request, result.outputs, {wire.COMPUTE_US: int(result.compute_s * 1e6)})

    def _answer(
        self, request: Framed[pb.ModelInferRequest], context: grpc.ServicerContext
    ) -> tuple[Framed[pb.ModelInferResponse] | None, grpc.StatusCode, str]:
        """The response, or None with the status and message that replace it; counted either way."""
        start = time.perf_counter()
        name = request.header.model_name
        model = name if name in self.core.segments else UNKNOWN_MODEL
        try:
            response, code, message = self._infer(request, _deadline(context)), grpc.StatusCode.OK, ""
        except Exception as e:  # every failure becomes a status; the server keeps serving
            response, (code, message) = None, _status_of(e, model)
        self.metrics.requests.labels(model=model, code=code.name).inc()
        if model != UNKNOWN_MODEL:
            self.metrics.request_seconds.labels(model=model).observe(time.perf_counter() - start)
        return response, code, message

    def ModelInfer(self, request, context):
        response, code, message = self._answer(request, context)
        if response is None:
            context.abort(code, message)
        return response

    def ModelStreamInfer(self, request_iterator, context) -> Iterator[tuple[str, Framed[pb.ModelInferResponse]]]:
        for request in request_iterator:
            response, _, message = self._answer(request, context)
            if response is None:
                response = Framed(pb.ModelInferResponse(id=request.header.id), [])
            yield message, response


def add_servicer(servicer: InferenceServicer, server: grpc.Server) -> None:
    """Register the OIP service; inference messages are framed by hand (splitpoint.framing), the rest are protobuf's."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {
        m.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, m.name),
            request_deserializer=GetMessageClass(m.input_type).FromString,
            response_serializer=GetMessageClass(m.output_type).SerializeToString,
        )
        for m in service.methods
    }
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
        servicer.ModelInfer, request_deserializer=framing.parse_request, response_serializer=Framed.to_bytes
    )
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        servicer.ModelStreamInfer, request_deserializer=framing.parse_request,
        response_serializer=framing.stream_answer_bytes,
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service.full_name, handlers)])


class _Malformed:
    """What a request that is not valid protobuf deserializes to."""

    def __init__(self, message: str):
        self.message = message


class MalformedRequests(grpc.ServerInterceptor):
    """Answers INVALID_ARGUMENT to messages that do not parse, naming the message type.

    gRPC's own handling answers them INTERNAL and logs a traceback per message,
    which lets any client fill the worker's log.
    """

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        def tolerant(data: bytes) -> object:
            try:
                return parse(data)
            except DecodeError:
                return _Malformed(f"{handler_call_details.method}: the request is not a valid protobuf message "
                                  f"({len(data)} bytes)")

        def checked(request, context):
            if isinstance(request, _Malformed):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            return request

        def stream(requests, context):
            for request in requests:
                yield checked(request, context)

        if handler.request_streaming:
            behaviour = handler.stream_stream or handler.stream_unary
            wrapped = lambda requests, context: behaviour(stream(requests, context), context)
        else:
            behaviour = handler.unary_unary or handler.unary_stream
            wrapped = lambda request, context: behaviour(checked(request, context), context)
        kind = ("stream_" if handler.request_streaming else "unary_") + ("stream" if handler.response_streaming else "unary")
        return handler._replace(request_deserializer=tolerant, **{kind: wrapped})
