"""What one request did: which path it took, how long each part took, why."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass
class Trace:
    """The story of one ``EdgeRuntime.infer`` call.

    ``path`` is "local" (the split runs everything on the edge), "cloud" (the
    worker answered) or "fallback" (the suffix ran locally from the cut
    tensors, ``fallback_reason`` says why). Times are milliseconds;
    ``network_ms`` is the round trip minus the worker's reported compute time.
    """

    split: str
    path: str = "local"
    bytes_raw: int = 0
    bytes_encoded: int = 0
    edge_ms: float = 0.0
    network_ms: float = 0.0
    cloud_ms: float = 0.0
    local_suffix_ms: float = 0.0
    total_ms: float = 0.0
    attempts: int = 0
    fallback_reason: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Counters:
    """Running totals since the runtime started."""

    requests: int = 0
    cloud: int = 0
    local: int = 0
    fallbacks: int = 0
    fallback_reasons: Counter = field(default_factory=Counter)
    probes: int = 0  # background requests that only measured the link (not in ``requests``)

    def record(self, trace: Trace) -> None:
        self.requests += 1
        if trace.path == "cloud":
            self.cloud += 1
        elif trace.path == "fallback":
            self.fallbacks += 1
            self.fallback_reasons[trace.fallback_reason] += 1
        else:
            self.local += 1
