"""Circuit breaker: an offline worker costs nothing per request.

CLOSED: requests go to the worker. After ``failure_threshold`` consecutive
failures (or one that cannot heal by retrying, such as a version mismatch)
it OPENs: requests finish locally at once, and a background probe polls the
worker's health with exponential backoff (tenacity). When the worker answers
SERVING the breaker goes HALF_OPEN: the next request tries the worker and
its outcome closes or reopens the circuit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import Enum

from tenacity import Retrying, retry_if_result, wait_exponential

log = logging.getLogger("splitpoint.edge")

# After a failure a retry cannot heal (wrong credentials, another model version, a bad request) the
# circuit stays open this long before the health probe may half-open it, doubling with each such
# opening in a row: the health service is open to all and answers SERVING whatever the credentials,
# so without the hold every other request would try a worker that refuses it.
FATAL_HOLD_S = 0.5
MAX_FATAL_HOLD_S = 30.0


class State(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    def __init__(
        self,
        probe: Callable[[], bool],
        failure_threshold: int = 3,
        probe_wait: wait_exponential | None = None,
    ):
        self._probe = probe
        self.failure_threshold = failure_threshold
        self._probe_wait = probe_wait or wait_exponential(multiplier=0.05, min=0.05, max=2.0)
        self._lock = threading.Lock()
        self._closed_event = threading.Event()  # set when the runtime shuts down
        self._failures = 0
        self._trial_in_flight = False
        self.state = State.CLOSED
        self.opened = 0  # how many times the circuit opened
        self._fatal_openings = 0  # openings in a row by failures a retry cannot heal
        self._need_probe = threading.Event()
        self._prober: threading.Thread | None = None

    def allow(self) -> bool:
        """May this request try the worker? In HALF_OPEN only one trial at a time."""
        with self._lock:
            if self.state is State.CLOSED:
                return True
            if self.state is State.HALF_OPEN and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            if self.state is not State.CLOSED:
                log.info("worker answers again: circuit closed, splitting resumes")
            self.state = State.CLOSED
            self._failures = 0
            self._fatal_openings = 0
            self._trial_in_flight = False

    def record_failure(self, reason: str, fatal: bool = False) -> None:
        """Count a failed call; ``fatal`` opens the circuit at once."""
        with self._lock:
            self._failures += 1
            self._trial_in_flight = False
            if self.state is State.OPEN:
                return
            if fatal or self.state is State.HALF_OPEN or self._failures >= self.failure_threshold:
                self.state = State.OPEN
                self.opened += 1
                self._fatal_openings = self._fatal_openings + 1 if fatal else 0
                log.warning("worker failing (%s): circuit open, finishing requests locally", reason)
                self._start_probe()

    def _start_probe(self) -> None:
        """Wake the prober (called with the lock held)."""
        self._need_probe.set()
        if self._prober is None:
            self._prober = threading.Thread(target=self._probe_loop, name="splitpoint-health-probe", daemon=True)
            self._prober.start()

    def _probe_loop(self) -> None:
        retrying = Retrying(
            retry=retry_if_result(lambda ok: not ok),
            wait=self._probe_wait,
            stop=lambda rs: self._closed_event.is_set(),
            sleep=self._closed_event.wait,
            retry_error_callback=lambda rs: False,
        )
        while True:
            self._need_probe.wait()
            if self._closed_event.is_set():
                return
            with self._lock:
                hold = FATAL_HOLD_S * 2 ** (self._fatal_openings - 1) if self._fatal_openings else 0.0
            if hold and self._closed_event.wait(min(hold, MAX_FATAL_HOLD_S)):
                return
            serving = retrying(self._probe)
            with self._lock:
                if not self._closed_event.is_set():  # shutdown's wake-up must not be lost
                    self._need_probe.clear()
                if serving and self.state is State.OPEN:
                    self.state = State.HALF_OPEN
                    log.info("worker health probe answered SERVING: circuit half-open")

    def shutdown(self) -> None:
        with self._lock:
            self._closed_event.set()
            self._need_probe.set()
        if self._prober is not None:
            self._prober.join(timeout=5)
