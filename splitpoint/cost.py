"""The predicted cost of one split, and the formula that turns it into latency on a link.

The partitioner fills a ``SplitCost`` per split from measured profiles and
stores it in the manifest (``Split.predicted``); the edge reads it back to pick
a split for the link it measures. Only the standard library is used, so the
edge can import this without onnx or networkx.

    latency = edge + encode + (sent + response bytes) * 8 / bandwidth + rtt + decode + cloud

``local`` (everything on the edge) costs ``edge_ms`` alone: no call is made.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from splitpoint.errors import SplitpointError

_BANDWIDTH_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_TIME_UNITS = {"ms": 1.0, "s": 1e3}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_LINK = re.compile(rf"\s*({_NUMBER})\s*([a-z]+)\s*/\s*({_NUMBER})\s*([a-z]+)\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Link:
    """A network path: bandwidth in bits per second and round-trip time in milliseconds."""

    bandwidth_bps: float
    rtt_ms: float

    def __post_init__(self) -> None:
        if not self.bandwidth_bps > 0 or not self.rtt_ms >= 0:
            raise SplitpointError(f"link needs a positive bandwidth and a non-negative RTT, got {self}")

    @classmethod
    def parse(cls, text: str) -> Link:
        """``"10mbit/30ms"``: bandwidth in bit, kbit, mbit or gbit (per second), RTT in ms or s."""
        m = _LINK.fullmatch(text)
        usage = f"link {text!r}: expected BANDWIDTH/RTT such as 10mbit/30ms (units: kbit, mbit, gbit; ms, s)"
        if m is None:
            raise SplitpointError(usage)
        rate, rate_unit, delay, delay_unit = m.group(1), m.group(3).lower(), m.group(4), m.group(6).lower()
        if rate_unit not in _BANDWIDTH_UNITS:
            raise SplitpointError(f"link {text!r}: unknown bandwidth unit {rate_unit!r} (use kbit, mbit or gbit)")
        if delay_unit not in _TIME_UNITS:
            raise SplitpointError(f"link {text!r}: unknown time unit {delay_unit!r} (use ms or s)")
        bandwidth = float(rate) * _BANDWIDTH_UNITS[rate_unit]
        if bandwidth <= 0:
            raise SplitpointError(f"link {text!r}: bandwidth must be positive")
        return cls(bandwidth, float(delay) * _TIME_UNITS[delay_unit])

    def transfer_ms(self, nbytes: float) -> float:
        """Time on the wire for ``nbytes``, without the round trip."""
        return nbytes * 8e3 / self.bandwidth_bps

    def __str__(self) -> str:
        mbit = self.bandwidth_bps / 1e6
        return f"{mbit:g}mbit/{self.rtt_ms:g}ms"


@dataclass(frozen=True)
class Breakdown:
    """Where the time of one call goes: the edge (prefix and encoding), the link, the cloud (decoding and suffix)."""

    edge_ms: float
    transfer_ms: float
    cloud_ms: float

    @property
    def total_ms(self) -> float:
        return self.edge_ms + self.transfer_ms + self.cloud_ms


@dataclass(frozen=True)
class SplitCost:
    """Predicted costs of one split, independent of the link.

    ``edge_ms`` is the prefix on the edge (the whole model for ``local``),
    ``cloud_ms`` the suffix on the cloud, ``local_suffix_ms`` the suffix on the
    edge (what a fallback costs after the prefix). ``encode_ms`` is the edge
    encoding the cut tensors and ``decode_ms`` the cloud decoding them;
    ``sent_bytes`` is their encoded size and ``response_bytes`` the raw size of
    the outputs the cloud returns.
    """

    edge_ms: float
    cloud_ms: float = 0.0
    local_suffix_ms: float = 0.0
    encode_ms: float = 0.0
    decode_ms: float = 0.0
    sent_bytes: int = 0
    response_bytes: int = 0
    local: bool = False

    def breakdown(self, link: Link) -> Breakdown:
        if self.local:
            return Breakdown(self.edge_ms, 0.0, 0.0)
        transfer = link.transfer_ms(self.sent_bytes + self.response_bytes) + link.rtt_ms
        return Breakdown(self.edge_ms + self.encode_ms, transfer, self.decode_ms + self.cloud_ms)

    def scaled(self, edge: float = 1.0, cloud: float = 1.0) -> SplitCost:
        """This split on an edge ``edge`` times and a worker ``cloud`` times as slow as profiled."""
        return replace(
            self,
            edge_ms=self.edge_ms * edge,
            encode_ms=self.encode_ms * edge,
            local_suffix_ms=self.local_suffix_ms * edge,
            cloud_ms=self.cloud_ms * cloud,
            decode_ms=self.decode_ms * cloud,
        )

    def latency_ms(self, link: Link) -> float:
        """Predicted end-to-end latency of one call over ``link``."""
        return self.breakdown(link).total_ms

    def fallback_ms(self) -> float:
        """Predicted latency when the worker is away and the suffix finishes on the edge."""
        return self.edge_ms + self.local_suffix_ms

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SplitCost:
        """Read ``to_json``'s dict; a missing or non-numeric field is a SplitpointError naming it."""
        if not isinstance(d, dict):
            raise SplitpointError(f"predicted costs must be a JSON object, got {type(d).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise SplitpointError(f"predicted costs: unknown field(s) {', '.join(unknown)}")
        if "edge_ms" not in d:
            raise SplitpointError("predicted costs: missing field edge_ms")
        values: dict[str, Any] = {}
        for name, value in d.items():
            if name == "local":
                if not isinstance(value, bool):
                    raise SplitpointError(f"predicted costs: local must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise SplitpointError(f"predicted costs: {name} must be a non-negative number, got {value!r}")
            values[name] = value
        return cls(**values)
