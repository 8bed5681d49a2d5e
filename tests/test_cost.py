"""The cost formula the edge uses: Link parsing, SplitCost latency and breakdown, JSON round trip."""

from __future__ import annotations

import subprocess
import sys

import pytest

from splitpoint.cost import Link, SplitCost
from splitpoint.errors import SplitpointError


@pytest.mark.parametrize(
    ("text", "bps", "rtt"),
    [
        ("10mbit/30ms", 10e6, 30.0),
        ("1gbit/1ms", 1e9, 1.0),
        ("500kbit/0.2s", 500e3, 200.0),
        (" 2.5 Mbit / 40 MS ", 2.5e6, 40.0),
        ("100mbit/0ms", 100e6, 0.0),
    ],
)
def test_link_parse(text: str, bps: float, rtt: float) -> None:
    link = Link.parse(text)
    assert link.bandwidth_bps == pytest.approx(bps)
    assert link.rtt_ms == pytest.approx(rtt)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10mbps/30ms", "unknown bandwidth unit 'mbps'"),
        ("10mbit/30us", "unknown time unit 'us'"),
        ("fast", "link 'fast': expected BANDWIDTH/RTT such as 10mbit/30ms"),
        ("0mbit/5ms", "bandwidth must be positive"),
        ("10mbit", "expected BANDWIDTH/RTT"),
    ],
)
def test_link_parse_errors_name_the_text(text: str, message: str) -> None:
    with pytest.raises(SplitpointError, match=message) as e:
        Link.parse(text)
    assert "\n" not in str(e.value)


def test_latency_is_the_documented_formula() -> None:
    cost = SplitCost(edge_ms=5.0, cloud_ms=2.0, local_suffix_ms=20.0, encode_ms=0.5, decode_ms=0.25,
                     sent_bytes=100_000, response_bytes=25_000)
    link = Link.parse("10mbit/30ms")
    wire_ms = 125_000 * 8 / 10e6 * 1e3  # 100 ms
    assert cost.latency_ms(link) == pytest.approx(5.0 + 0.5 + wire_ms + 30.0 + 0.25 + 2.0)
    b = cost.breakdown(link)
    assert (b.edge_ms, b.transfer_ms, b.cloud_ms) == pytest.approx((5.5, wire_ms + 30.0, 2.25))
    assert b.total_ms == pytest.approx(cost.latency_ms(link))
    assert cost.fallback_ms() == pytest.approx(25.0)


def test_local_pays_no_call() -> None:
    local = SplitCost(edge_ms=12.0, local=True)
    assert local.latency_ms(Link.parse("1mbit/100ms")) == 12.0
    assert local.breakdown(Link.parse("1mbit/100ms")).transfer_ms == 0.0


def test_json_round_trip() -> None:
    cost = SplitCost(edge_ms=1.5, cloud_ms=2.0, encode_ms=0.1, sent_bytes=10, response_bytes=40)
    assert SplitCost.from_json(cost.to_json()) == cost
    assert set(cost.to_json()) == {"edge_ms", "cloud_ms", "local_suffix_ms", "encode_ms", "decode_ms", "sent_bytes",
                                   "response_bytes", "local"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cloud_ms": 1.0}, "missing field edge_ms"),
        ({"edge_ms": 1.0, "gpu_ms": 2}, "unknown field.*gpu_ms"),
        ({"edge_ms": -1.0}, "edge_ms must be a non-negative number"),
        ({"edge_ms": "fast"}, "edge_ms must be a non-negative number"),
        ({"edge_ms": 1.0, "local": "yes"}, "local must be true or false"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_from_json_names_the_bad_field(data, message: str) -> None:
    with pytest.raises(SplitpointError, match=message):
        SplitCost.from_json(data)


def test_the_core_formula_imports_nothing_heavy() -> None:
    """The edge imports this module: no onnx, networkx or partitioner behind it."""
    heavy = ("onnx", "networkx", "partitioner", "numpy")
    code = f"import sys, splitpoint.cost; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
