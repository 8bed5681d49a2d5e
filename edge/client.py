"""The edge's gRPC connection to its workers: OIP inference and grpc.health.v1 probes."""

from __future__ import annotations

import ipaddress
import json
from collections import namedtuple
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitpoint import defaults, framing
from splitpoint._proto import grpc_service_pb2 as pb
from splitpoint.errors import SplitpointError
from splitpoint.framing import Framed


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


def _method(name: str) -> str:
    return f"/{pb.DESCRIPTOR.services_by_name['GRPCInferenceService'].full_name}/{name}"


def _request_bytes(request: Framed[pb.ModelInferRequest] | bytes) -> bytes:
    return request if isinstance(request, bytes) else request.to_bytes()


def _read(path: str | Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise SplitpointError(f"{what} {path}: cannot read it ({e.strerror or e})") from None


def worker_addresses(cloud: str | Sequence[str]) -> list[str]:
    """``"h:p,h:p"`` or a list of ``"h:p"``: the addresses, blanks dropped."""
    parts = cloud.split(",") if isinstance(cloud, str) else list(cloud)
    addresses = [a.strip() for a in parts if a.strip()]
    if not addresses:
        raise SplitpointError(f"no worker address in {cloud!r}: give HOST:PORT, or several separated by commas")
    return addresses


def channel_target(addresses: Sequence[str]) -> str:
    """One gRPC target for all ``addresses``.

    One address is used as given (a DNS name that resolves to several workers
    is spread over by round_robin too). Several must be IP literals of one
    family: gRPC's ``ipv4:``/``ipv6:`` resolvers take a list of addresses, its
    DNS resolver takes one name.
    """
    if len(addresses) == 1:
        return addresses[0]
    families = [_ip_family(a) for a in addresses]
    for a, family in zip(addresses, families):
        if family is None:
            raise SplitpointError(
                f"worker address {a!r}: several workers must be given as IP:PORT ([IPv6]:PORT); "
                "for host names give one DNS name that resolves to all of them"
            )
    if len(set(families)) > 1:
        raise SplitpointError(f"worker addresses {list(addresses)} mix IPv4 and IPv6: give one family")
    return f"ipv{families[0]}:" + ",".join(addresses)


def _ip_family(address: str) -> int | None:
    """4 for ``IPv4:PORT``, 6 for ``[IPv6]:PORT``, None for anything else."""
    host, _, port = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        return None
    return ip.version if port.isdigit() and bracketed == (ip.version == 6) else None


class WorkerClient:
    """One channel to one or several worker addresses.

    gRPC's ``round_robin`` policy spreads calls over the connected workers
    and skips one that is down. With several addresses and a
    ``health_service``, gRPC's client-side health checking also skips a
    worker that is up but does not report that service SERVING (another
    model version, or draining). Reconnect backoff is kept short so a
    restarted worker is found within seconds; gRPC's own retries are off
    because the runtime retries within the request's budget itself. With
    ``tls`` the channel is TLS only (no plaintext fallback); ``token`` is
    sent as ``authorization: Bearer`` on every call made on ``channel``.
    """

    def __init__(
        self,
        address: str | Sequence[str],
        max_message_bytes: int = defaults.MAX_MESSAGE_BYTES,
        tls: ClientTLS | None = None,
        token: str | None = None,
        health_service: str | None = None,
    ):
        addresses = worker_addresses(address)
        if tls is not None and len(addresses) > 1 and not tls.server_name:
            raise SplitpointError(
                "TLS to several workers needs ClientTLS(server_name=...): the name their certificates carry "
                "(a list of addresses gives gRPC no host name to check)"
            )
        self.address = ",".join(addresses)
        target = channel_target(addresses)
        config: dict = {"loadBalancingConfig": [{"round_robin": {}}]}
        if len(addresses) > 1 and health_service is not None:
            config["healthCheckConfig"] = {"serviceName": health_service}
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.service_config", json.dumps(config)),
        ]
        if tls is None:
            channel = grpc.insecure_channel(target, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            channel = grpc.secure_channel(target, tls.credentials(), options=options)
        self.channel = grpc.intercept_channel(channel, _BearerToken(token)) if token else channel
        self._infer = self.channel.unary_unary(
            _method("ModelInfer"), request_serializer=Framed.to_bytes, response_deserializer=framing.parse_response
        )
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def infer(self, request: Framed[pb.ModelInferRequest], timeout: float) -> Framed[pb.ModelInferResponse]:
        return self._infer(request, timeout=timeout)

    def stream(self, requests: Iterator[Framed[pb.ModelInferRequest] | bytes]) -> Iterator[tuple[str, Framed]]:
        """A ModelStreamInfer call: (error message, response) for each request sent, as answers come.

        Requests may be given already serialised (bytes), to be done with the arrays they view.
        """
        call = self.channel.stream_stream(
            _method("ModelStreamInfer"), request_serializer=_request_bytes, response_deserializer=framing.parse_stream_answer
        )
        return call(requests)

    def serving(self, service: str = "", timeout: float = 1.0) -> bool:
        """True when the worker's health service reports ``service`` as SERVING."""
        try:
            resp = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING

    def close(self) -> None:
        self.channel.close()
