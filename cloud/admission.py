"""Admission control: a bounded number of requests compute, a bounded number wait.

Past both bounds a request is refused at once, so a loaded worker answers
"overloaded" in microseconds instead of letting latency grow without limit.
Waiters are served first come, first served; one whose deadline passes while
it waits, or has passed when its turn comes, leaves without being computed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from splitpoint.errors import SplitpointError


class Overloaded(SplitpointError):
    """Every compute slot is taken and the waiting queue is full."""


class DeadlineExpired(SplitpointError):
    """The caller's deadline passed before the request could be computed."""


class Admission:
    """At most ``max_inflight`` holders of a slot and ``max_queue`` queued requests.

    A queued request either waits for a slot itself (``slot()``) or, for a
    batched model, holds a queue place (``enter_queue``/``leave_queue``) while
    its batch forms; the batch then waits for one slot with ``queued=False``.
    Deadlines are ``time.monotonic()`` instants (None: no deadline).
    """

    def __init__(self, max_inflight: int, max_queue: int):
        if max_inflight < 1 or max_queue < 0:
            raise SplitpointError(
                f"at least 1 request must compute (--max-inflight, got {max_inflight}) "
                f"and the queue cannot be negative (--max-queue, got {max_queue})"
            )
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._waiting: deque[threading.Event] = deque()  # slot waiters, first come first served
        self._queued = 0  # requests holding a queue place
        self._inflight = 0

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def waiting(self) -> int:
        return self._queued

    def enter_queue(self) -> None:
        """Take a queue place; Overloaded when all are taken."""
        with self._lock:
            self._take_place()

    def leave_queue(self) -> None:
        with self._lock:
            self._queued -= 1

    @contextmanager
    def slot(self, deadline: float | None = None, queued: bool = True) -> Iterator[float]:
        """Hold a compute slot for the ``with`` block; yields the seconds spent waiting for it.

        Raises Overloaded when the queue is full and DeadlineExpired when the
        deadline passes before the slot is granted. ``queued=False`` waits
        without a queue place, for a batch whose requests hold theirs.
        """
        start = time.monotonic()
        self._acquire(deadline, queued)
        try:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExpired("the request's deadline passed while it waited in the worker's queue")
            yield time.monotonic() - start
        finally:
            self._release()

    def _take_place(self) -> None:
        if self._queued >= self.max_queue:
            raise Overloaded(
                f"worker overloaded: {self._inflight} requests computing and {self._queued} waiting "
                "(the queue's bound); retry later or on another worker"
            )
        self._queued += 1

    def _acquire(self, deadline: float | None, queued: bool) -> None:
        with self._lock:
            if self._inflight < self.max_inflight and not self._waiting:
                self._inflight += 1
                return
            if queued:
                self._take_place()
            turn = threading.Event()
            self._waiting.append(turn)
        try:
            turn.wait(None if deadline is None else max(deadline - time.monotonic(), 0.0))
            with self._lock:
                if turn.is_set():  # _release handed its slot over to us
                    return
                self._waiting.remove(turn)
            raise DeadlineExpired("the request's deadline passed while it waited in the worker's queue")
        finally:
            if queued:
                self.leave_queue()

    def _release(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()  # the slot passes to the next waiter; inflight is unchanged
            else:
                self._inflight -= 1
