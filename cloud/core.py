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

# Every segment is served as version "1" of its model (the Triton export writes it there too).
VERSION = "1"


class ModelNotFound(SplitpointError):
    pass


class VersionMismatch(SplitpointError):
    pass


class InvalidParameter(SplitpointError):
    """A request parameter of the wrong type or value."""


class TimeoutExpired(DeadlineExpired):
    """The request's own ``timeout`` parameter passed while it waited (Triton answers UNAVAILABLE)."""


def _integer(params: Mapping[str, object], key: str) -> int:
    """A non-negative integer parameter (0 when absent); bools are not integers here."""
    value = params.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(f"parameter {key!r} must be an integer (int64), not {type(value).__name__}")
    if value < 0:
        raise InvalidParameter(f"parameter {key!r} must be at least 0, not {value}")
    return value


def queue_timeout(params: Mapping[str, object]) -> float | None:
    """Check a request's reserved parameters (Triton's, tritonclient sets them); its ``timeout`` in seconds.

    ``timeout`` (int64 microseconds, 0 for none) bounds the time the request
    may wait for compute, like Triton's queue timeout with
    ``allow_timeout_override``. The others are accepted and change nothing,
    as on Triton for a model like ours: ``priority``, since the model has no
    priority levels (the queue is first come, first served), and
    ``sequence_id``/``sequence_start``/``sequence_end``, since the model is
    not a sequence model: it keeps no state, so its answer to a request is
    the same inside a sequence or not. Wrong types and negative values are
    refused, naming the parameter.
    """
    sequence_id = params.get("sequence_id", 0)
    if isinstance(sequence_id, bool) or not isinstance(sequence_id, int | str):
        raise InvalidParameter("parameter 'sequence_id' must be an integer (int64) or a string")
    for flag in ("sequence_start", "sequence_end"):
        if not isinstance(params.get(flag, False), bool):
            raise InvalidParameter(f"parameter {flag!r} must be a bool")
    _integer(params, "priority")
    timeout_us = _integer(params, "timeout")
    return timeout_us / 1e6 if timeout_us else None


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

    def segment(self, name: str, version: str = "") -> Segment:
        """The served segment called ``name``, at ``version`` ("" is the latest, the only one).

        Names are dict keys, never paths, so none reaches outside the repository.
        """
        try:
            segment = self.segments[name]
        except KeyError:
            served = ", ".join(sorted(self.segments)) or "none"
            raise ModelNotFound(f"model {name!r} is not served here; served models: {served}") from None
        if version not in ("", VERSION):
            raise ModelNotFound(f"model {name!r} has no version {version!r} (it has {VERSION!r})")
        return segment

    def check_version(self, segment: Segment, model_sha256: str | None) -> None:
        """Refuse requests cut from another version of the model (None: the sender did not say)."""
        if model_sha256 is not None and model_sha256 != segment.model_sha256:
            raise VersionMismatch(
                f"model {segment.name!r}: request was cut from model sha256 {str(model_sha256)[:12]}..., "
                f"this worker serves {segment.model_sha256[:12]}..."
            )

    def infer(
        self,
        segment: Segment,
        decode: Callable[[], Mapping[str, np.ndarray]],
        deadline: float | None = None,
        timeout_s: float | None = None,
    ) -> Run:
        """Run ``segment`` on the tensors ``decode()`` returns, once admitted.

        ``decode`` runs only after admission: a refused request is never
        decoded. ``deadline`` is a ``time.monotonic()`` instant: a request
        still waiting then is dropped uncomputed (DeadlineExpired), since nobody
        waits for its answer any more. A request still waiting ``timeout_s``
        after it came (its own ``timeout``) is dropped too, and told so
        (TimeoutExpired). Raises Overloaded when the queue is full.
        """
        timeout_at = None if timeout_s is None else time.monotonic() + timeout_s
        by_timeout = timeout_at is not None and (deadline is None or timeout_at < deadline)
        if by_timeout:
            deadline = timeout_at
        batcher = self.batchers.get(segment.name)
        try:
            run = batcher.run(decode, deadline) if batcher is not None else self._run_alone(segment, decode, deadline)
        except DeadlineExpired:
            self.metrics.dropped_expired.labels(model=segment.name).inc()
            if by_timeout:
                raise TimeoutExpired(f"request timeout expired: still queued after its timeout of "
                                     f"{timeout_s * 1e6:.0f} us; it was not computed") from None
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
