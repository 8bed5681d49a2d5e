"""Compute speed: how much slower (or faster) the edge and the worker run than their profiles said.

Predicted costs come from profiles taken once. A phone that heats up, a kiosk
busy drawing its UI, a worker under load: each runs at another speed than it
was profiled at, and a split policy comparing stale edge times with fresh
link measurements picks the wrong split. Every answered request compares the
compute time it measured with the time predicted for it; the recent ratios'
median scales the predictions the policy compares.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Speed:
    """Measured over predicted compute time: 2.0 is twice as slow as profiled."""

    edge: float = 1.0
    cloud: float = 1.0


class SpeedEstimator:
    """Ratios of measured to predicted compute time, for the edge and for the worker.

    Each side's speed is the median of its last ``window`` ratios: a worker
    that stalls now and then on a busy machine (spikes of several times its
    usual time) must not make every split through it look slow, while a
    lasting change shows once it fills half the window. Predictions under
    ``min_ms`` are not compared: timer and scheduling noise would dominate.
    """

    def __init__(self, window: int = 9, min_ms: float = 0.5):
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.min_ms = min_ms
        self._ratios = {"edge": deque(maxlen=window), "cloud": deque(maxlen=window)}
        self._lock = threading.Lock()

    def observe(self, side: str, predicted_ms: float, measured_ms: float) -> None:
        """One compute time measured on ``side`` ("edge" or "cloud") where ``predicted_ms`` was expected."""
        if predicted_ms < self.min_ms or not measured_ms > 0 or not math.isfinite(measured_ms):
            return
        with self._lock:
            self._ratios[side].append(measured_ms / predicted_ms)

    def estimate(self) -> Speed:
        with self._lock:
            edge, cloud = (statistics.median(r) if r else 1.0 for r in (self._ratios["edge"], self._ratios["cloud"]))
        return Speed(edge, cloud)
