"""Start the worker: load the bundles, then serve OIP and grpc.health.v1."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cloud.core import InferenceCore
from cloud.repository import load_segments
from cloud.servicer import InferenceServicer
from splitpoint._proto import grpc_service_pb2_grpc as pb_grpc
from splitpoint.bundle import health_service
from splitpoint.errors import SplitpointError

log = logging.getLogger("splitpoint.cloud")

DEFAULT_MAX_MESSAGE_BYTES = 512 << 20
DEFAULT_MAX_DECODED_BYTES = 1 << 30


@dataclass
class Worker:
    """A running worker; ``stop`` drains in-flight requests for ``grace`` seconds."""

    server: grpc.Server
    health: health.HealthServicer
    address: str
    models: list[str]

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()


def serve(
    bundles: Sequence[str | Path],
    host: str = "127.0.0.1",
    port: int = 8500,
    *,
    threads: int | None = None,
    max_workers: int = 8,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    block: bool = True,
) -> Worker:
    """Serve every cloud segment of ``bundles`` as an OIP model.

    With ``block`` it runs until SIGINT/SIGTERM and then drains; otherwise it
    returns the running ``Worker`` (``port=0`` picks a free port).
    """
    if not bundles:
        raise SplitpointError("no bundle to serve: give at least one bundle directory")
    segments = load_segments(bundles, threads=threads)
    if not segments:
        raise SplitpointError("the bundles have no cloud segments to serve")
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(InferenceCore(segments), max_decoded_bytes), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SplitpointError(f"cannot listen on {host}:{port} (address in use or not permitted)")
    server.start()
    # Ready only now that every session is loaded.
    names = ["", *segments, *(health_service(s.name, s.model_sha256) for s in segments.values())]
    for name in names:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    address = f"{host}:{bound}"
    worker = Worker(server, health_servicer, address, sorted(segments))
    stop = _stop_on_signals() if block else None
    log.info("splitpoint worker listening on %s, serving %d model(s): %s", address, len(segments), ", ".join(worker.models))
    if stop is not None:
        stop.wait()
        worker.stop()
        log.info("worker stopped")
    return worker


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT/SIGTERM (installed before the start line, so no signal is missed)."""
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("received %s, draining and stopping", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return stop
