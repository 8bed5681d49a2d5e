"""The edge's gRPC connection to a worker: OIP inference and grpc.health.v1 probes."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitpoint._proto import grpc_service_pb2 as pb
from splitpoint._proto import grpc_service_pb2_grpc as pb_grpc

DEFAULT_MAX_MESSAGE_BYTES = 512 << 20


class WorkerClient:
    """One channel to one worker address.

    Reconnect backoff is kept short so a restarted worker is found within
    seconds; gRPC's own retries are off because the runtime retries within
    the request's budget itself.
    """

    def __init__(self, address: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.address = address
        self.channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.enable_retries", 0),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._oip = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def infer(self, request: pb.ModelInferRequest, timeout: float) -> pb.ModelInferResponse:
        return self._oip.ModelInfer(request, timeout=timeout)

    def serving(self, service: str = "", timeout: float = 1.0) -> bool:
        """True when the worker's health service reports ``service`` as SERVING."""
        try:
            resp = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING

    def close(self) -> None:
        self.channel.close()
