"""gRPC servicer for the Open Inference Protocol: translation only.

Messages become numpy tensors (splitpoint.wire), the core does the work, and
errors become the gRPC status the protocol expects. Clients never see a stack
trace; unexpected failures are logged here and answered with INTERNAL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

import splitpoint
from cloud.core import InferenceCore, ModelNotFound, VersionMismatch
from splitpoint import dtypes, wire
from splitpoint._proto import grpc_service_pb2 as pb
from splitpoint._proto import grpc_service_pb2_grpc as pb_grpc
from splitpoint.errors import CodecError, WireError

log = logging.getLogger("splitpoint.cloud")

PLATFORM = "onnxruntime_onnx"
VERSION = "1"


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def _status_of(e: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(e, ModelNotFound):
        return grpc.StatusCode.NOT_FOUND, str(e)
    if isinstance(e, VersionMismatch):
        return grpc.StatusCode.FAILED_PRECONDITION, str(e)
    if isinstance(e, (WireError, CodecError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(e)
    if isinstance(e, _Abort):
        return e.code, str(e)
    log.exception("internal error")
    return grpc.StatusCode.INTERNAL, "internal error (logged on the worker)"


def _dims(shape) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: InferenceCore, max_decoded_bytes: int):
        self.core = core
        self.max_decoded_bytes = max_decoded_bytes

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=request.name in self.core.segments)

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="splitpoint", version=splitpoint.__version__)

    def ModelMetadata(self, request, context):
        try:
            seg = self.core.segment(request.name)
        except ModelNotFound as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
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

    def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        seg = self.core.segment(request.model_name)
        if request.model_version not in ("", VERSION):
            raise ModelNotFound(f"model {seg.name!r} has no version {request.model_version!r} (it has {VERSION!r})")
        sha = wire.get_params(request.parameters).get(wire.MODEL_SHA256)
        if sha is not None and not isinstance(sha, str):
            raise WireError(f"parameter {wire.MODEL_SHA256!r} must be a string")
        self.core.check_version(seg, sha)
        inputs = wire.read_request(request, seg.session.inputs, self.max_decoded_bytes)
        unknown = [o.name for o in request.outputs if o.name not in {s.name for s in seg.session.outputs}]
        if unknown:
            raise WireError(f"requested output(s) {unknown} do not exist in model {seg.name!r}")
        result = self.core.infer(seg, inputs)
        return wire.build_response(request, result.outputs, {wire.COMPUTE_US: int(result.compute_s * 1e6)})

    def ModelInfer(self, request, context):
        try:
            return self._infer(request)
        except Exception as e:  # every failure becomes a status; the server keeps serving
            code, message = _status_of(e)
            context.abort(code, message)

    def ModelStreamInfer(self, request_iterator, context) -> Iterator[pb.ModelStreamInferResponse]:
        for request in request_iterator:
            try:
                yield pb.ModelStreamInferResponse(infer_response=self._infer(request))
            except Exception as e:
                _, message = _status_of(e)
                yield pb.ModelStreamInferResponse(
                    error_message=message, infer_response=pb.ModelInferResponse(id=request.id)
                )
