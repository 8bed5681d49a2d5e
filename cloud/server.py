"""Start the worker: load the bundles, then serve OIP and grpc.health.v1."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cloud.admission import Admission
from cloud.core import Batching, InferenceCore
from cloud.metrics import WorkerMetrics
from cloud.repository import SessionSettings, load_segments
from cloud.security import TokenInterceptor, check_token, server_credentials
from cloud.servicer import InferenceServicer, MalformedRequests, add_servicer
from splitpoint import defaults
from splitpoint.bundle import health_service
from splitpoint.errors import SplitpointError

log = logging.getLogger("splitpoint.cloud")

# Threads beyond the admission bounds, so health checks, metadata calls and the
# immediate refusals of a full queue still get a thread when every slot is taken.
SPARE_THREADS = 4


@dataclass
class Worker:
    """A running worker; ``stop`` drains in-flight requests for ``grace`` seconds."""

    server: grpc.Server
    health: health.HealthServicer
    address: str
    models: list[str]
    metrics_server: WSGIServer | None = None

    def stop(self, grace: float = defaults.GRACE_S) -> None:
        """Report NOT_SERVING, refuse new calls, let running ones finish within ``grace`` seconds."""
        self.health.enter_graceful_shutdown()
        stopped = self.server.stop(grace)
        log.info("no longer accepting calls; letting those in flight finish (up to %gs)", grace,
                 extra={"event": "refusing"})
        stopped.wait()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()

    def wait(self) -> None:
        self.server.wait_for_termination()


def serve(
    bundles: Sequence[str | Path],
    host: str = "127.0.0.1",
    port: int = 8500,
    *,
    session: SessionSettings | None = None,
    batching: Batching | None = None,
    max_inflight: int = defaults.MAX_INFLIGHT,
    max_queue: int = defaults.MAX_QUEUE,
    max_message_bytes: int = defaults.MAX_MESSAGE_BYTES,
    max_decoded_bytes: int = defaults.MAX_DECODED_BYTES,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    tls_client_ca: str | Path | None = None,
    token: str | None = None,
    metrics_port: int | None = None,
    grace_s: float = defaults.GRACE_S,
    block: bool = True,
) -> Worker:
    """Serve every cloud segment of ``bundles`` (bundles, or directories of bundles) as an OIP model.

    ``session`` sets onnxruntime's options for every model; ``batching`` turns
    on dynamic batching for the segments with a batch dimension. At most
    ``max_inflight`` executions run at once and ``max_queue`` requests wait;
    past that a request gets RESOURCE_EXHAUSTED at once. ``tls_cert``/``tls_key``
    turn on TLS, ``tls_client_ca`` mutual TLS, ``token`` bearer-token checks on
    the OIP service; ``metrics_port`` serves Prometheus metrics over HTTP.
    With ``block`` it runs until SIGINT/SIGTERM and then drains for
    ``grace_s`` seconds; otherwise it returns the running ``Worker``
    (``port=0`` picks a free port).
    """
    if not bundles:
        raise SplitpointError("no bundle to serve: give at least one bundle directory or directory of bundles")
    # Security settings are checked before the (slow) model loading, so mistakes show at once.
    if (tls_cert is None) != (tls_key is None):
        raise SplitpointError("TLS needs both a certificate and its private key (--tls-cert and --tls-key)")
    if tls_client_ca is not None and tls_cert is None:
        raise SplitpointError("mutual TLS (--tls-client-ca) needs TLS: give --tls-cert and --tls-key too")
    credentials = server_credentials(tls_cert, tls_key, tls_client_ca) if tls_cert is not None else None
    if token is not None:
        check_token(token)
    admission = Admission(max_inflight, max_queue)
    if batching is not None and max_queue < 1:
        raise SplitpointError("batches form in the queue: --max-batch needs --max-queue of at least 1")

    segments = load_segments(bundles, session)
    if not segments:
        raise SplitpointError("the bundles have no cloud segments to serve")
    metrics = WorkerMetrics(segments, admission)
    rpc_threads = max_inflight + max_queue + SPARE_THREADS
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=rpc_threads, thread_name_prefix="rpc"),
        interceptors=[*([TokenInterceptor(token, metrics.unauthenticated.inc)] if token is not None else []),
                      MalformedRequests()],
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
        # Calls past the threads are refused (RESOURCE_EXHAUSTED) instead of waiting unseen in gRPC's own queue.
        maximum_concurrent_rpcs=rpc_threads,
    )
    core = InferenceCore(segments, admission, metrics, batching)
    add_servicer(InferenceServicer(core, metrics, max_decoded_bytes), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    target = f"{host}:{port}"
    bound = server.add_secure_port(target, credentials) if credentials else server.add_insecure_port(target)
    if bound == 0:
        raise SplitpointError(f"cannot listen on {target} (address in use or not permitted)")
    metrics_server = metrics.serve_http(host, metrics_port) if metrics_port is not None else None
    stop = _stop_on_signals() if block else None  # before readiness, so no signal finds the default handler
    server.start()
    # Ready only now that every session is loaded.
    names = ["", *segments, *(health_service(s.name, s.model_sha256) for s in segments.values())]
    for name in names:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    address = f"{host}:{bound}"
    worker = Worker(server, health_servicer, address, sorted(segments), metrics_server)
    if token is not None and credentials is None:
        log.warning("bearer tokens without TLS travel in clear text: use --tls-cert/--tls-key "
                    "unless a TLS-terminating proxy sits in front of the worker")
    transport = "plaintext" if credentials is None else "mutual TLS" if tls_client_ca is not None else "TLS"
    auth = ", bearer token" if token is not None else ""
    metrics_at = f"; metrics at http://{host}:{metrics_server.server_port}/metrics" if metrics_server else ""
    log.info(
        "splitpoint worker listening on %s (%s%s), serving %d model(s): %s%s",
        address, transport, auth, len(segments), ", ".join(worker.models), metrics_at,
        extra={"event": "listening", "address": address, "transport": transport, "models": worker.models},
    )
    for name, seg in sorted(segments.items()):
        batched = f"batched up to {batching.max_batch} rows" if batching and name in core.batchers else "unbatched"
        log.info("model %s: %s; %s", name, getattr(seg.session, "description", seg.session.backend), batched,
                 extra={"event": "model", "model": name, "batched": name in core.batchers})
    if stop is not None:
        # A signal may land on one of gRPC's threads, which does not wake a main thread blocked
        # in wait(); Python runs the handler only once the main thread runs again, so poll.
        while not stop.wait(timeout=0.2):
            pass
        worker.stop(grace_s)
        log.info("worker stopped", extra={"event": "stopped"})
    return worker


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT/SIGTERM."""
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("received %s, draining and stopping", signal.Signals(signum).name, extra={"event": "draining"})
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return stop
