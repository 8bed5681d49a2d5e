"""Compute speed: how much slower (or faster) the edge and the worker run than their profiles said.

Predicted costs come from profiles taken once. A phone that heats up, a kiosk
busy drawing its UI, a worker under load: each runs at another speed than it
was profiled at, and a split policy comparing stale edge times with fresh
link measurements picks the wrong split. Every answered request compares the
compute time it measured with the time predicted for it; the ratios,
smoothed in the log domain, scale the predictions the policy compares.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Speed:
    """Measured over predicted compute time: 2.0 is twice as slow as profiled."""

    edge: float = 1.0
    cloud: float = 1.0


class SpeedEstimator:
    """Smoothed ratios of measured to predicted compute time, for the edge and for the worker.

    ``alpha`` weighs the newest sample. Predictions under ``min_ms`` are not
    compared: timer and scheduling noise would dominate the ratio.
    """

    def __init__(self, alpha: float = 0.3, min_ms: float = 0.5):
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.min_ms = min_ms
        self._log = {"edge": 0.0, "cloud": 0.0}
        self._lock = threading.Lock()

    def observe(self, side: str, predicted_ms: float, measured_ms: float) -> None:
        """One compute time measured on ``side`` ("edge" or "cloud") where ``predicted_ms`` was expected."""
        if predicted_ms < self.min_ms or not measured_ms > 0 or not math.isfinite(measured_ms):
            return
        sample = math.log(measured_ms / predicted_ms)
        with self._lock:
            self._log[side] = (1 - self.alpha) * self._log[side] + self.alpha * sample

    def estimate(self) -> Speed:
        with self._lock:
            return Speed(math.exp(self._log["edge"]), math.exp(self._log["cloud"]))
