"""Transport security and authentication for the worker: TLS, mutual TLS, bearer tokens.

Certificate files are checked with Python's ssl module before gRPC sees them,
so a bad file is one error line naming it instead of a failed handshake later.
The token check is a server interceptor: every Open Inference Protocol call
must carry ``authorization: Bearer <token>``. The grpc.health.v1 service stays
open, because Kubernetes' gRPC probes and load balancers cannot send
credentials; it reveals only whether named models are served.
"""

from __future__ import annotations

import hmac
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

import grpc

from splitpoint.errors import SplitpointError

log = logging.getLogger("splitpoint.cloud")

OPEN_SERVICES = ("/grpc.health.v1.Health/",)
_SCHEME = "bearer "


def _read(path: str | Path, what: str, pem_label: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise SplitpointError(f"{what} {path}: cannot read it ({e.strerror or e})") from None
    if f"{pem_label}-----".encode() not in data:
        raise SplitpointError(f"{what} {path}: no PEM {pem_label.lower()} in it")
    return data


def server_credentials(
    cert: str | Path, key: str | Path, client_ca: str | Path | None = None
) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with ``client_ca``, clients must show a certificate it signed."""
    chain = _read(cert, "TLS certificate", "CERTIFICATE")
    private_key = _read(key, "TLS key", "PRIVATE KEY")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:  # an empty password: an encrypted key fails here instead of prompting on the terminal
        context.load_cert_chain(cert, key, password=b"")
    except ssl.SSLError:
        raise SplitpointError(
            f"TLS key {key}: not a usable private key for the certificate in {cert} (mismatched, damaged or encrypted)"
        ) from None
    roots = None
    if client_ca is not None:
        roots = _read(client_ca, "TLS client CA", "CERTIFICATE")
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except ssl.SSLError:
            raise SplitpointError(f"TLS client CA {client_ca}: not a valid PEM certificate") from None
    return grpc.ssl_server_credentials([(private_key, chain)], root_certificates=roots,
                                       require_client_auth=roots is not None)


def check_token(token: str) -> None:
    """Refuse tokens that cannot travel in an HTTP/2 header (the message never shows the token)."""
    if not token or not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise SplitpointError("the bearer token must be non-empty printable ASCII without spaces")


class TokenInterceptor(grpc.ServerInterceptor):
    """Answers UNAUTHENTICATED to calls without the right bearer token (compared in constant time).

    ``on_refused`` is called once per refused call (for a metric).
    """

    def __init__(self, token: str, on_refused: Callable[[], None]):
        check_token(token)
        self._token = token.encode()
        self._on_refused = on_refused

    def _authorized(self, metadata) -> bool:
        value = next((v for k, v in metadata or () if k == "authorization"), "")
        if not isinstance(value, str) or value[: len(_SCHEME)].lower() != _SCHEME:
            return False
        return hmac.compare_digest(value[len(_SCHEME):].encode(), self._token)

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_SERVICES) or self._authorized(handler_call_details.invocation_metadata):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: let gRPC answer UNIMPLEMENTED
            return None

        def refuse(request, context):
            self._on_refused()
            log.info("refused %s from %s: missing or wrong bearer token", method, context.peer(),
                     extra={"event": "unauthenticated", "method": method})
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (authorization: Bearer ...)")

        # The refusal must have the method's streaming shape, or gRPC mis-handles the call.
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(refuse)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(refuse)
        return grpc.unary_unary_rpc_method_handler(refuse)
