"""The edge's gRPC connection to a worker: OIP inference and grpc.health.v1 probes."""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitpoint._proto import grpc_service_pb2 as pb
from splitpoint._proto import grpc_service_pb2_grpc as pb_grpc
from splitpoint.errors import SplitpointError

DEFAULT_MAX_MESSAGE_BYTES = 512 << 20


@dataclass(frozen=True)
class ClientTLS:
    """TLS towards the worker; all files PEM.

    ``root_ca`` is the CA that signed the worker's certificate (None: the
    system's roots). ``cert``/``key`` are this client's certificate and key,
    for workers that require mutual TLS. ``server_name`` overrides the name
    checked against the worker's certificate (when dialling an IP address or
    a name the certificate does not carry).
    """

    root_ca: str | Path | None = None
    cert: str | Path | None = None
    key: str | Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise SplitpointError("a client certificate needs its key and a key its certificate (give both)")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.root_ca, "TLS root CA"),
            private_key=_read(self.key, "TLS client key"),
            certificate_chain=_read(self.cert, "TLS client certificate"),
        )


class _CallDetails(
    namedtuple("_CallDetails", "method timeout metadata credentials wait_for_ready compression"), grpc.ClientCallDetails
):
    pass


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer`` to every call on the channel, whoever makes it.

    Metadata rather than call credentials: those need TLS, and a worker may sit
    behind a TLS-terminating proxy on a plaintext hop.
    """

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_token(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_token(client_call_details), request_iterator)


def _read(path: str | Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise SplitpointError(f"{what} {path}: cannot read it ({e.strerror or e})") from None


class WorkerClient:
    """One channel to one worker address.

    Reconnect backoff is kept short so a restarted worker is found within
    seconds; gRPC's own retries are off because the runtime retries within
    the request's budget itself. With ``tls`` the channel is TLS only (no
    plaintext fallback); ``token`` is sent as ``authorization: Bearer`` on
    every call made on ``channel``.
    """

    def __init__(
        self,
        address: str,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tls: ClientTLS | None = None,
        token: str | None = None,
    ):
        self.address = address
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if tls is None:
            channel = grpc.insecure_channel(address, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            channel = grpc.secure_channel(address, tls.credentials(), options=options)
        self.channel = grpc.intercept_channel(channel, _BearerToken(token)) if token else channel
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
