"""Link estimate: bandwidth and RTT measured from the edge's own traffic.

Each answered request gives its network time (round trip minus the worker's
reported compute time) and its bytes on the wire; small health probes give
the round-trip time alone. The RTT is the minimum of the last few samples
(a probe that also paid for connection set-up or queueing must not count as
the link's delay); bandwidth is smoothed (EWMA in the log domain, since links
change by factors, not by amounts), so a link that became slow or fast shows
within a few requests.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class LinkEstimate:
    bandwidth_bps: float | None  # None until a transfer was big enough to tell
    rtt_ms: float | None  # None until a probe or request came back
    samples: int


class LinkEstimator:
    """Smoothed bandwidth and RTT from observed transfers and probes.

    ``alpha`` weighs the newest sample (0.5: half the estimate is the latest
    observation). Two samples in a row more than ``jump`` times away from the
    estimate, on the same side, are a link that changed, not noise: the
    estimate takes the newest at once (a single outlier, such as a stalled
    worker counted as network time, only moves it by ``alpha``).
    A transfer whose network time is mostly round trip says little about
    bandwidth; below ``min_transfer_share`` of its time it only sets a floor
    (the link carried its bytes at least that fast), so a link that came back
    fast is still noticed.
    The RTT is the minimum of the last ``rtt_window`` samples.
    """

    def __init__(self, alpha: float = 0.5, min_transfer_share: float = 0.2, rtt_window: int = 5, jump: float = 3.0):
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._log_jump = math.log(jump)
        self._far_side = 0  # +1 / -1: the last sample was far above / below the estimate
        self._capped = False  # the estimate is a timeout's ceiling, not a measurement
        self.min_transfer_share = min_transfer_share
        self._lock = threading.Lock()
        self._log_bw: float | None = None
        self._rtts: deque[float] = deque(maxlen=rtt_window)
        self._samples = 0

    @property
    def _rtt_ms(self) -> float | None:
        return min(self._rtts) if self._rtts else None

    def observe_rtt(self, rtt_ms: float) -> None:
        """A round trip that carried (almost) no payload: a health probe."""
        if rtt_ms < 0 or not math.isfinite(rtt_ms):
            return
        with self._lock:
            self._rtts.append(rtt_ms)
            self._samples += 1

    def observe_transfer(self, nbytes: int, network_ms: float) -> None:
        """A request and its answer: ``nbytes`` both ways took ``network_ms`` on the network."""
        if nbytes <= 0 or network_ms <= 0 or not math.isfinite(network_ms):
            return
        with self._lock:
            self._samples += 1
            rtt = self._rtt_ms
            if rtt is None:  # no probe yet: bandwidth cannot be told from the round trip
                return
            if network_ms < rtt:  # faster than the RTT estimate: the RTT is at most this
                self._rtts.append(network_ms)
            transfer_ms = network_ms - min(rtt, network_ms)
            if transfer_ms >= self.min_transfer_share * network_ms:
                sample = math.log(nbytes * 8 / (transfer_ms / 1e3))
            else:
                # Mostly round trip: only a floor, as if the whole time had been transfer.
                floor = math.log(nbytes * 8 / (network_ms / 1e3))
                if self._log_bw is not None and self._log_bw >= floor:
                    return
                sample = floor
            self._log_bw = self._next(sample)

    def _next(self, sample: float) -> float:
        """The estimate after ``sample``: smoothed, or the sample itself after a confirmed step."""
        if self._log_bw is None or self._capped:  # the first measurement, or the first since a ceiling
            self._capped = False
            return sample
        gap = sample - self._log_bw
        side = (gap > self._log_jump) - (gap < -self._log_jump)
        confirmed = side != 0 and side == self._far_side
        self._far_side = side
        return sample if confirmed else self._ewma(self._log_bw, sample)

    def observe_timeout(self, nbytes: int, waited_ms: float) -> None:
        """A request of ``nbytes`` got no answer within ``waited_ms``: the link is at most that fast.

        Without this, a link that became too slow for the deadline would teach
        the estimate nothing: every request would time out and fall back.
        """
        if nbytes <= 0 or waited_ms <= 0 or not math.isfinite(waited_ms):
            return
        with self._lock:
            self._samples += 1
            ceiling = math.log(nbytes * 8 / (waited_ms / 1e3))
            if self._log_bw is None or self._log_bw > ceiling:
                self._log_bw, self._capped, self._far_side = ceiling, True, 0

    def estimate(self) -> LinkEstimate:
        with self._lock:
            bw = None if self._log_bw is None else math.exp(self._log_bw)
            return LinkEstimate(bw, self._rtt_ms, self._samples)

    def _ewma(self, old: float, new: float) -> float:
        return (1 - self.alpha) * old + self.alpha * new
