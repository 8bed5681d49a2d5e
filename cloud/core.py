"""The worker's protocol-free core: find the segment, check the version, admit, run it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from cloud.admission import Admission, DeadlineExpired
from cloud.batching import Batcher, Run, batchable
from cloud.metrics import WorkerMetrics
from cloud.repository import Segment
from splitpoint.errors import SplitpointError


class ModelNotFound(SplitpointError):
    pass


class VersionMismatch(SplitpointError):
    pass


@dataclass(frozen=True)
class Batching:
    """Dynamic batching for every batchable segment: up to ``max_batch`` rows, waiting up to ``delay_s``."""

    max_batch: int
    delay_s: float

    def __post_init__(self) -> None:
        if self.max_batch < 2:
            raise SplitpointError(f"--max-batch must be at least 2 to batch (1 turns batching off), not {self.max_batch}")
        if self.delay_s < 0:
            raise SplitpointError(f"--batch-delay-ms cannot be negative, not {self.delay_s * 1e3:g}")


class InferenceCore:
    """Runs segments under the worker's admission bounds and records what it does.

    With ``batching``, segments whose inputs and outputs share a dynamic first
    dimension run concurrent requests together (cloud.batching); the others,
    and every segment without it, run one request per execution.
    """

    def __init__(self, segments: Mapping[str, Segment], admission: Admission, metrics: WorkerMetrics,
                 batching: Batching | None = None):
        self.segments = dict(segments)
        self.admission = admission
        self.metrics = metrics
        self.batchers = {
            name: Batcher(seg.session, admission, batching.max_batch, batching.delay_s,
                          metrics.batch_size.labels(model=name).observe)
            for name, seg in self.segments.items()
            if batching is not None and batchable(seg.session.inputs, seg.session.outputs)
        }

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
    ) -> Run:
        """Run ``segment`` on the tensors ``decode()`` returns, once admitted.

        ``decode`` runs only after admission: a refused request is never
        decoded. ``deadline`` is a ``time.monotonic()`` instant: a request
        still waiting then is dropped uncomputed (DeadlineExpired), since nobody
        waits for its answer any more. Raises Overloaded when the queue is full.
        """
        batcher = self.batchers.get(segment.name)
        try:
            run = batcher.run(decode, deadline) if batcher is not None else self._run_alone(segment, decode, deadline)
        except DeadlineExpired:
            self.metrics.dropped_expired.labels(model=segment.name).inc()
            raise
        self.metrics.queue_seconds.labels(model=segment.name).observe(run.queue_s)
        self.metrics.compute_seconds.labels(model=segment.name).observe(run.compute_s)
        return run

    def _run_alone(
        self, segment: Segment, decode: Callable[[], Mapping[str, np.ndarray]], deadline: float | None
    ) -> Run:
        """One request, one execution; decoding inside the slot bounds decoded tensors to ``max_inflight`` requests."""
        with self.admission.slot(deadline) as queue_s:
            inputs = decode()
            self.metrics.batch_size.labels(model=segment.name).observe(1)
            start = time.perf_counter()
            outputs = segment.session.run(inputs)
            return Run(outputs, queue_s, time.perf_counter() - start)
