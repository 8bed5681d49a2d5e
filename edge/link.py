"""Link estimate: bandwidth and RTT measured from the edge's own traffic.

Each answered request gives its network time (round trip minus the worker's
reported compute time) and its bytes on the wire; small health probes give
the round-trip time alone. Both are smoothed (EWMA; bandwidth in the log
domain, since links change by factors, not by amounts), so a link that
became slow or fast shows within a few requests.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class LinkEstimate:
    bandwidth_bps: float | None  # None until a transfer was big enough to tell
    rtt_ms: float | None  # None until a probe or request came back
    samples: int


class LinkEstimator:
    """Smoothed bandwidth and RTT from observed transfers and probes.

    ``alpha`` weighs the newest sample (0.5: half the estimate is the latest
    observation, so a step change is mostly seen after two or three samples).
    A transfer whose network time is mostly round trip says little about
    bandwidth; below ``min_transfer_share`` of its time it is not used for it.
    """

    def __init__(self, alpha: float = 0.5, min_transfer_share: float = 0.2):
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.min_transfer_share = min_transfer_share
        self._lock = threading.Lock()
        self._log_bw: float | None = None
        self._rtt_ms: float | None = None
        self._samples = 0

    def observe_rtt(self, rtt_ms: float) -> None:
        """A round trip that carried (almost) no payload: a health probe."""
        if rtt_ms < 0 or not math.isfinite(rtt_ms):
            return
        with self._lock:
            self._rtt_ms = rtt_ms if self._rtt_ms is None else self._ewma(self._rtt_ms, rtt_ms)
            self._samples += 1

    def observe_transfer(self, nbytes: int, network_ms: float) -> None:
        """A request and its answer: ``nbytes`` both ways took ``network_ms`` on the network."""
        if nbytes <= 0 or network_ms <= 0 or not math.isfinite(network_ms):
            return
        with self._lock:
            self._samples += 1
            rtt = self._rtt_ms
            if rtt is None or network_ms < rtt:
                # No probe yet, or this one beat the estimate: the RTT is at most this.
                self._rtt_ms = network_ms if rtt is None else self._ewma(rtt, network_ms)
                return
            transfer_ms = network_ms - rtt
            if transfer_ms < self.min_transfer_share * network_ms:
                return
            sample = math.log(nbytes * 8 / (transfer_ms / 1e3))
            self._log_bw = sample if self._log_bw is None else self._ewma(self._log_bw, sample)

    def estimate(self) -> LinkEstimate:
        with self._lock:
            bw = None if self._log_bw is None else math.exp(self._log_bw)
            return LinkEstimate(bw, self._rtt_ms, self._samples)

    def _ewma(self, old: float, new: float) -> float:
        return (1 - self.alpha) * old + self.alpha * new
