"""Dynamic batching: concurrent requests for one segment run as one, stacked along dim 0.

A segment is batchable when every input and output has the same symbolic first
dimension (the batch): rows of several requests can then be concatenated, run
once and split back, and each request gets exactly the rows it would have got
alone. Requests are grouped by everything but that dimension (names, dtypes,
remaining dims), so tensors of different shapes are never mixed.

The first request of a group to arrive collects the batch: it waits up to
``delay_s`` for ``max_batch`` rows, then for a compute slot, then takes
whatever rows of its group are pending by then (up to ``max_batch``) and runs
them. While a slot is busy, requests therefore pile up and the next run takes
them all at once, even with no delay. Waiting requests hold places of the
worker's bounded queue (Overloaded past it); one whose deadline passes before
its batch starts leaves uncomputed (DeadlineExpired).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cloud.admission import Admission, DeadlineExpired
from splitpoint.backends import Session
from splitpoint.bundle import TensorSpec
from splitpoint.errors import SplitpointError, WireError

EXPIRED = "the request's deadline passed while it waited for its batch"
# One group: per input, (name, dtype, dims after the first).
GroupKey = tuple[tuple[str, str, tuple[int, ...]], ...]


def batchable(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
    """Whether requests can be stacked along dim 0: every tensor's first dim is one and the same symbol.

    A named symbol, not just "dynamic", so inputs that vary independently
    (a[N, 4], b[M, 4]) are never stacked; Triton's max_batch_size makes the same assumption.
    """
    firsts = [s.shape[0] if s.shape else None for s in (*inputs, *outputs)]
    return bool(firsts) and all(isinstance(d, str) for d in firsts) and len(set(firsts)) == 1


@dataclass
class Run:
    """A request's share of one execution."""

    outputs: dict[str, np.ndarray]
    queue_s: float  # arrival to the start of its run
    compute_s: float  # the whole run's compute time


@dataclass(eq=False)
class _Request:
    inputs: Mapping[str, np.ndarray]
    rows: int
    deadline: float | None
    arrived: float = field(default_factory=time.monotonic)
    state: str = "pending"  # pending -> collecting (it forms the next batch) -> taken -> done
    result: Run | None = None
    error: BaseException | None = None


class Batcher:
    """Forms and runs batches for one segment; ``run`` is called from many request threads at once."""

    def __init__(self, session: Session, admission: Admission, max_batch: int, delay_s: float,
                 on_run: Callable[[int], None]):
        """``on_run`` is told the number of requests of each execution (the batch-size metric)."""
        self.session = session
        self.admission = admission
        self.max_batch = max_batch
        self.delay_s = delay_s
        self.on_run = on_run
        self._cond = threading.Condition()
        self._pending: dict[GroupKey, list[_Request]] = {}

    def run(self, decode: Callable[[], Mapping[str, np.ndarray]], deadline: float | None) -> Run:
        """The outputs for the tensors ``decode()`` returns, computed together with whatever shares their batch.

        The request takes a place of the worker's queue first (Overloaded when
        none is free), so refused requests are never decoded; it leaves the
        queue when its batch starts or its deadline passes (DeadlineExpired).
        """
        self.admission.enter_queue()
        try:
            inputs = decode()
            request = _Request(inputs, _rows(inputs), deadline)
        except BaseException:
            self.admission.leave_queue()
            raise
        key = tuple((n, str(a.dtype), a.shape[1:]) for n, a in sorted(inputs.items()))
        with self._cond:
            group = self._pending.setdefault(key, [])
            group.append(request)
            if len(group) == 1:
                request.state = "collecting"
            self._cond.notify_all()
            while request.state == "pending":
                if deadline is not None and time.monotonic() >= deadline:
                    self._leave(key, request)
                    raise DeadlineExpired(EXPIRED)
                self._cond.wait(None if deadline is None else deadline - time.monotonic())
        if request.state == "collecting":
            self._collect_and_run(key, request)
        with self._cond:
            self._cond.wait_for(lambda: request.state == "done")
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _collect_and_run(self, key: GroupKey, collector: _Request) -> None:
        """Wait for a full batch or the delay, then a compute slot; run what is pending then.

        If the collector's own deadline passes first, it leaves and the next
        pending request of the group collects instead.
        """
        with self._cond:
            group = self._pending[key]
            until = collector.arrived + self.delay_s
            self._cond.wait_for(lambda: sum(r.rows for r in group) >= self.max_batch, max(until - time.monotonic(), 0))
        try:
            with self.admission.slot(collector.deadline, queued=False):
                batch = self._take(key)
                if batch:
                    self._execute(batch)
        except DeadlineExpired as e:  # raised only before _take: the collector is still in its group
            with self._cond:
                self._leave(key, collector)
                collector.error, collector.state = e, "done"

    def _leave(self, key: GroupKey, request: _Request) -> None:
        """Take a request out of its group before its batch starts (the caller holds the lock)."""
        group = self._pending[key]
        group.remove(request)
        self.admission.leave_queue()
        if group and group[0].state == "pending":
            group[0].state = "collecting"
        elif not group:
            del self._pending[key]
        self._cond.notify_all()

    def _take(self, key: GroupKey) -> list[_Request]:
        """Remove up to ``max_batch`` rows from the group, FIFO; drop the expired; hand collecting to the next."""
        now = time.monotonic()
        with self._cond:
            group = self._pending[key]
            batch, rows = [], 0
            while group and (not batch or rows + group[0].rows <= self.max_batch):
                request = group.pop(0)
                self.admission.leave_queue()
                if request.deadline is not None and now >= request.deadline:
                    request.error = DeadlineExpired(EXPIRED)
                    request.state = "done"
                    continue
                request.state = "taken"
                batch.append(request)
                rows += request.rows
            if group:
                group[0].state = "collecting"
            else:
                del self._pending[key]
            self._cond.notify_all()
        return batch

    def _execute(self, batch: list[_Request]) -> None:
        self.on_run(len(batch))
        start = time.monotonic()
        try:
            if len(batch) == 1:
                outputs = [self.session.run(batch[0].inputs)]
            else:
                stacked = {n: np.concatenate([r.inputs[n] for r in batch]) for n in batch[0].inputs}
                outputs = _unstack(self.session.run(stacked), [r.rows for r in batch])
            compute_s = time.monotonic() - start
            for request, out in zip(batch, outputs):
                request.result = Run(out, start - request.arrived, compute_s)
        except Exception as e:  # every request of the batch gets the failure; the servicer logs and maps it
            for request in batch:
                request.error = e
        with self._cond:
            for request in batch:
                request.state = "done"
            self._cond.notify_all()


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    rows = {name: a.shape[0] for name, a in inputs.items()}
    if len(set(rows.values())) != 1:
        raise WireError(f"the input tensors must have the same size in the batch dimension (dim 0): {rows}")
    return next(iter(rows.values()))


def _unstack(outputs: Mapping[str, np.ndarray], rows: list[int]) -> list[dict[str, np.ndarray]]:
    """Split each output along dim 0 into the requests' rows."""
    total = sum(rows)
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != total:
            raise SplitpointError(f"batched output {name!r} has shape {list(value.shape)}, not {total} rows: "
                                  "the segment does not keep its batch dimension")
    bounds = np.cumsum(rows)[:-1]
    parts = {name: np.split(value, bounds) for name, value in outputs.items()}
    return [{name: parts[name][i] for name in outputs} for i in range(len(rows))]
