"""The worker's Prometheus metrics, in a registry of their own.

A private registry keeps two workers in one process (tests, embedding) apart
and leaves the process-global default registry to the application. Names
follow Prometheus conventions: a ``splitpoint_worker_`` prefix, base units
(``_seconds``, ``_bytes``) and ``_total`` on counters.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from cloud.admission import Admission
from splitpoint.errors import SplitpointError

# From half a millisecond (a tiny segment on loopback) to ten seconds (a queue at its bound).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The model label of requests for a model that is not served: a client-chosen name
# must not become a label value, or any client could create series without bound.
UNKNOWN_MODEL = "_unknown"
# Requests per execution: 1 without batching, up to --max-batch with it.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _Children:
    """A labelled metric whose children are looked up once per label set.

    prometheus_client's ``labels()`` validates and locks on every call, which for a
    small request costs more than the updates themselves (a fifth of the worker's
    time per request); label values here are bounded (served models, status codes).
    """

    def __init__(self, family: Counter | Histogram):
        self.family = family
        self._children: dict[tuple, Any] = {}

    def labels(self, **values: str) -> Any:
        key = tuple(values.items())
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.family.labels(**values)
        return child


class WorkerMetrics:
    """Counters, histograms and gauges of one worker."""

    def __init__(self, models: Iterable[str], admission: Admission):
        self.registry = r = CollectorRegistry()
        self.requests = _Children(Counter(
            "splitpoint_worker_requests", "Inference requests answered, by model and gRPC status code",
            ["model", "code"], registry=r,
        ))
        self.request_seconds = _Children(Histogram(
            "splitpoint_worker_request_duration_seconds",
            "Time from receiving a request to its answer (decode, queue, compute, encode)",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        ))
        self.queue_seconds = _Children(Histogram(
            "splitpoint_worker_queue_duration_seconds", "Time an admitted request waited for a compute slot",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        ))
        self.compute_seconds = _Children(Histogram(
            "splitpoint_worker_compute_duration_seconds", "Time spent running the segment",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        ))
        self.batch_size = _Children(Histogram(
            "splitpoint_worker_batch_size", "Requests run together in one execution of the segment (1: unbatched)",
            ["model"], buckets=BATCH_BUCKETS, registry=r,
        ))
        self.received_bytes = _Children(Counter(
            "splitpoint_worker_received_bytes",
            "Input tensor bytes received: form=encoded as they came on the wire, form=raw once decoded",
            ["model", "form"], registry=r,
        ))
        self.dropped_expired = _Children(Counter(
            "splitpoint_worker_dropped_expired",
            "Requests dropped without computing because their deadline passed while they waited",
            ["model"], registry=r,
        ))
        self.unauthenticated = Counter(
            "splitpoint_worker_unauthenticated_requests", "Calls refused for a missing or wrong bearer token",
            registry=r,
        )
        Gauge("splitpoint_worker_queue_depth", "Requests waiting for a compute slot or for their batch",
              registry=r).set_function(lambda: admission.waiting)
        Gauge("splitpoint_worker_inflight_requests", "Requests computing now",
              registry=r).set_function(lambda: admission.inflight)
        for model in models:  # every served model's series exists from the start, at zero
            for family in (self.request_seconds, self.queue_seconds, self.compute_seconds, self.batch_size,
                           self.dropped_expired):
                family.labels(model=model)
            for form in ("encoded", "raw"):
                self.received_bytes.labels(model=model, form=form)

    def serve_http(self, host: str, port: int) -> WSGIServer:
        """Expose ``/metrics`` on ``host:port`` from a daemon thread; ``shutdown()`` the result to stop."""
        try:
            server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise SplitpointError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
        return server
