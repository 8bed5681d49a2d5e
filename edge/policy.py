"""Split policies: which split a request takes, as small strategies to combine.

``Pinned`` always answers the same split. ``LowestPredicted`` takes the
bundle's candidate with the lowest predicted latency on the current link
estimate (``splitpoint.cost``), switching only when another is clearly
better (hysteresis), so it does not flap. ``Explore`` wraps a policy so that
while it keeps everything on the edge, one request in ``every`` asks for a
probe of the link: without traffic the bandwidth estimate would never learn
that the link came back. The runtime sends the probe in the background, so
the request that asked for it is still answered locally, at local speed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Protocol

from edge.link import LinkEstimate
from edge.speed import Speed
from splitpoint.bundle import LOCAL
from splitpoint.cost import Link, SplitCost


class SplitPolicy(Protocol):
    """``candidates``: every split it may answer; ``current``: its choice if the link stays as it is."""

    candidates: list[str]

    @property
    def current(self) -> str: ...

    def choose(self, estimate: LinkEstimate) -> str: ...

    def take_probe(self) -> str | None:
        """The split to probe the link with in the background, once, if one is due."""
        ...


class Pinned:
    def __init__(self, split_id: str):
        self.candidates = [split_id]

    @property
    def current(self) -> str:
        return self.candidates[0]

    def choose(self, estimate: LinkEstimate) -> str:
        return self.current

    def take_probe(self) -> str | None:
        return None


class LowestPredicted:
    """The candidate whose predicted latency on the estimated link is lowest.

    ``hysteresis`` is the fraction by which a candidate must beat the current
    one to take over (0.1: 10 % faster). Until the link has been measured the
    ``start`` split is used. ``speed``, when given, says how much slower than
    profiled the edge and the worker compute now (``edge.speed``); the
    predicted compute times are scaled by it.
    """

    def __init__(
        self,
        costs: Mapping[str, SplitCost],
        start: str,
        hysteresis: float = 0.1,
        speed: Callable[[], Speed] | None = None,
    ):
        if start not in costs:
            raise ValueError(f"start split {start!r} has no predicted cost")
        self.costs = dict(costs)
        self.candidates = list(costs)
        self.current = start
        self.hysteresis = hysteresis
        self.speed = speed
        self._lock = threading.Lock()

    def predicted(self, estimate: LinkEstimate) -> dict[str, float] | None:
        """Predicted latency of every candidate on the estimated link (None: not measured yet)."""
        if estimate.bandwidth_bps is None or estimate.rtt_ms is None:
            return None
        link = Link(estimate.bandwidth_bps, estimate.rtt_ms)
        speed = self.speed() if self.speed is not None else Speed()
        return {split_id: cost.scaled(speed.edge, speed.cloud).latency_ms(link) for split_id, cost in self.costs.items()}

    def choose(self, estimate: LinkEstimate) -> str:
        scores = self.predicted(estimate)
        with self._lock:
            if scores is not None:
                best = min(scores, key=scores.__getitem__)
                if scores[best] < scores[self.current] * (1 - self.hysteresis):
                    self.current = best
            return self.current

    def take_probe(self) -> str | None:
        return None


class Explore:
    """While ``policy`` keeps requests local, ask for a probe through ``probe_split`` every ``every`` requests,
    starting with the first."""

    def __init__(self, policy: SplitPolicy, probe_split: str, every: int = 5):
        if every < 2:
            raise ValueError(f"every must be at least 2, got {every}")
        if probe_split not in policy.candidates:
            raise ValueError(f"probe split {probe_split!r} is not among the policy's candidates")
        self.policy = policy
        self.candidates = policy.candidates
        self.probe_split = probe_split
        self.every = every
        self._local_streak = 0
        self._due = False
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        return self.policy.current

    def choose(self, estimate: LinkEstimate) -> str:
        choice = self.policy.choose(estimate)
        with self._lock:
            if choice != LOCAL:
                self._local_streak = 0
                self._due = False
            else:
                self._local_streak += 1  # the first local request probes at once: the link may be fine
                self._due |= (self._local_streak - 1) % self.every == 0
            return choice

    def take_probe(self) -> str | None:
        with self._lock:
            due, self._due = self._due, False
        return self.probe_split if due else None
