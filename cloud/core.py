"""The worker's protocol-free core: find the segment, check the version, admit, run it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from cloud.admission import Admission, DeadlineExpired
from cloud.metrics import WorkerMetrics
from cloud.repository import Segment
from splitpoint.errors import SplitpointError


class ModelNotFound(SplitpointError):
    pass


class VersionMismatch(SplitpointError):
    pass


@dataclass
class Result:
    outputs: dict[str, np.ndarray]
    compute_s: float


class InferenceCore:
    """Runs segments under the worker's admission bounds and records what it does."""

    def __init__(self, segments: Mapping[str, Segment], admission: Admission, metrics: WorkerMetrics):
        self.segments = dict(segments)
        self.admission = admission
        self.metrics = metrics

    def segment(self, name: str) -> Segment:
        """The served segment called ``name``; names are dict keys, never paths, so none reaches outside."""
        try:
            return self.segments[name]
        except KeyError:
            served = ", ".join(sorted(self.segments)) or "none"
            raise ModelNotFound(f"model {name!r} is not served here; served models: {served}") from None

    def check_version(self, segment: Segment, model_sha256: str | None) -> None:
        """Refuse requests cut from another version of the model (None: the sender did not say)."""
        if model_sha256 is not None and model_sha256 != segment.model_sha256:
            raise VersionMismatch(
                f"model {segment.name!r}: request was cut from model sha256 {str(model_sha256)[:12]}..., "
                f"this worker serves {segment.model_sha256[:12]}..."
            )

    def infer(
        self, segment: Segment, decode: Callable[[], Mapping[str, np.ndarray]], deadline: float | None = None
    ) -> Result:
        """Run ``segment`` on the tensors ``decode()`` returns, once a compute slot is free.

        ``decode`` runs inside the slot: a refused or expired request is never
        decoded, and decoded tensors exist for at most ``max_inflight`` requests.
        ``deadline`` is a ``time.monotonic()`` instant: a request still waiting
        then is dropped uncomputed (DeadlineExpired), since nobody waits for its
        answer any more. Raises Overloaded when the queue is full.
        """
        try:
            with self.admission.slot(deadline) as queue_s:
                inputs = decode()
                start = time.perf_counter()
                outputs = segment.session.run(inputs)
                compute_s = time.perf_counter() - start
        except DeadlineExpired:
            self.metrics.dropped_expired.labels(model=segment.name).inc()
            raise
        self.metrics.queue_seconds.labels(model=segment.name).observe(queue_s)
        self.metrics.compute_seconds.labels(model=segment.name).observe(compute_s)
        return Result(outputs, compute_s)
