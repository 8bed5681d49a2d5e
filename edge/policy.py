"""Split policies: which split a request takes, as small strategies to combine.

``Pinned`` always answers the same split. ``LowestPredicted`` takes the
bundle's candidate with the lowest predicted latency on the current link
estimate (``splitpoint.cost``), switching only when another is clearly
better (hysteresis), so it does not flap. ``Explore`` wraps a policy so that
while it keeps everything on the edge, one request in ``every`` still goes
through the worker: without traffic the bandwidth estimate would never learn
that the link came back.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Protocol

from edge.link import LinkEstimate
from splitpoint.bundle import LOCAL
from splitpoint.cost import Link, SplitCost


class SplitPolicy(Protocol):
    """``candidates``: every split it may answer; ``current``: its choice if the link stays as it is."""

    candidates: list[str]

    @property
    def current(self) -> str: ...

    def choose(self, estimate: LinkEstimate) -> str: ...


class Pinned:
    def __init__(self, split_id: str):
        self.candidates = [split_id]

    @property
    def current(self) -> str:
        return self.candidates[0]

    def choose(self, estimate: LinkEstimate) -> str:
        return self.current


class LowestPredicted:
    """The candidate whose predicted latency on the estimated link is lowest.

    ``hysteresis`` is the fraction by which a candidate must beat the current
    one to take over (0.15: 15 % faster). Until the link has been measured the
    ``start`` split is used.
    """

    def __init__(self, costs: Mapping[str, SplitCost], start: str, hysteresis: float = 0.15):
        if start not in costs:
            raise ValueError(f"start split {start!r} has no predicted cost")
        self.costs = dict(costs)
        self.candidates = list(costs)
        self.current = start
        self.hysteresis = hysteresis
        self._lock = threading.Lock()

    def predicted(self, estimate: LinkEstimate) -> dict[str, float] | None:
        """Predicted latency of every candidate on the estimated link (None: not measured yet)."""
        if estimate.bandwidth_bps is None or estimate.rtt_ms is None:
            return None
        link = Link(estimate.bandwidth_bps, estimate.rtt_ms)
        return {split_id: cost.latency_ms(link) for split_id, cost in self.costs.items()}

    def choose(self, estimate: LinkEstimate) -> str:
        scores = self.predicted(estimate)
        with self._lock:
            if scores is not None:
                best = min(scores, key=scores.__getitem__)
                if scores[best] < scores[self.current] * (1 - self.hysteresis):
                    self.current = best
            return self.current


class Explore:
    """While ``policy`` keeps requests local, send one in ``every`` through ``probe_split``."""

    def __init__(self, policy: SplitPolicy, probe_split: str, every: int = 20):
        if every < 2:
            raise ValueError(f"every must be at least 2, got {every}")
        if probe_split not in policy.candidates:
            raise ValueError(f"probe split {probe_split!r} is not among the policy's candidates")
        self.policy = policy
        self.candidates = policy.candidates
        self.probe_split = probe_split
        self.every = every
        self._local_streak = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        return self.policy.current

    def choose(self, estimate: LinkEstimate) -> str:
        choice = self.policy.choose(estimate)
        with self._lock:
            if choice != LOCAL:
                self._local_streak = 0
                return choice
            self._local_streak += 1
            if self._local_streak % self.every == 0:
                return self.probe_split
            return choice
