"""What the search minimises: weights on the parts of a call, composable like tenacity's strategies.

An objective scores a ``SplitCost`` on a ``Link`` as a weighted sum of its
breakdown (edge compute, time on the wire, cloud compute) and of the bytes
on the wire. Being linear is what lets the min-cut find the exact optimum,
so objectives combine only linearly: ``latency() + 0.2 * cloud_compute()``.

- ``latency()``: end-to-end milliseconds (the default);
- ``edge_energy(power)``: millijoules the edge spends, from a ``PowerProfile``:
  compute watts while it runs the prefix and encodes, idle watts while it waits
  for the wire and the cloud, radio joules per byte sent or received;
- ``cloud_compute()``: milliseconds of cloud compute (decoding and the suffix).
"""

from __future__ import annotations

from dataclasses import dataclass

from splitpoint.cost import Link, SplitCost
from splitpoint.errors import SplitpointError


@dataclass(frozen=True)
class PowerProfile:
    """An edge device's power draw; the defaults are a phone-class SoC on Wi-Fi."""

    compute_w: float = 3.0
    idle_w: float = 0.5
    radio_j_per_byte: float = 100e-9

    @classmethod
    def parse(cls, text: str) -> PowerProfile:
        """``"compute=3,idle=0.5,radio=1e-7"`` (watts, watts, joules per byte); omitted keys keep defaults."""
        keys = {"compute": "compute_w", "idle": "idle_w", "radio": "radio_j_per_byte"}
        values: dict[str, float] = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, eq, value = item.partition("=")
            if not eq or key.strip() not in keys:
                raise SplitpointError(f"--power {text!r}: expected compute=W,idle=W,radio=J_PER_BYTE, got {item!r}")
            try:
                number = float(value)
            except ValueError:
                raise SplitpointError(f"--power {text!r}: {key.strip()} must be a number, got {value!r}") from None
            if number < 0:
                raise SplitpointError(f"--power {text!r}: {key.strip()} must not be negative")
            values[keys[key.strip()]] = number
        return cls(**values)


@dataclass(frozen=True)
class Objective:
    """Weights per ms of edge compute, wire time and cloud compute, and per byte on the wire."""

    name: str
    unit: str
    edge: float = 0.0
    wire: float = 0.0
    cloud: float = 0.0
    per_byte: float = 0.0

    def score(self, cost: SplitCost, link: Link) -> float:
        b = cost.breakdown(link)
        wire_bytes = 0 if cost.local else cost.sent_bytes + cost.response_bytes
        return self.edge * b.edge_ms + self.wire * b.transfer_ms + self.cloud * b.cloud_ms + self.per_byte * wire_bytes

    def __add__(self, other: Objective) -> Objective:
        unit = self.unit if self.unit == other.unit else "mixed units"
        return Objective(f"{self.name} + {other.name}", unit, self.edge + other.edge, self.wire + other.wire,
                         self.cloud + other.cloud, self.per_byte + other.per_byte)

    def __mul__(self, k: float) -> Objective:
        if k < 0:
            raise SplitpointError(f"objective weight {k} is negative: the min-cut needs non-negative costs")
        return Objective(f"{k:g}*{self.name}", self.unit, self.edge * k, self.wire * k, self.cloud * k, self.per_byte * k)

    __rmul__ = __mul__


def latency() -> Objective:
    return Objective("latency", "ms", edge=1.0, wire=1.0, cloud=1.0)


def edge_energy(power: PowerProfile | None = None) -> Objective:
    p = power or PowerProfile()
    return Objective("energy", "mJ", edge=p.compute_w, wire=p.idle_w, cloud=p.idle_w, per_byte=p.radio_j_per_byte * 1e3)


def cloud_compute() -> Objective:
    return Objective("cloud", "cloud ms", cloud=1.0)


OBJECTIVES = {"latency": latency, "energy": edge_energy, "cloud": cloud_compute}
