"""The link estimator follows a link that changes, from the numbers requests produce."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.link import LinkEstimator


def _transfer(nbytes: int, bandwidth_bps: float, rtt_ms: float) -> float:
    return rtt_ms + nbytes * 8 / bandwidth_bps * 1e3


def test_converges_on_a_steady_link():
    est = LinkEstimator()
    est.observe_rtt(20.0)
    for _ in range(5):
        est.observe_transfer(250_000, _transfer(250_000, 10e6, 20.0))
    e = est.estimate()
    assert e.rtt_ms == pytest.approx(20.0) and e.bandwidth_bps == pytest.approx(10e6, rel=1e-6)


def test_notices_a_step_change_within_a_few_requests():
    est = LinkEstimator()
    est.observe_rtt(5.0)
    for _ in range(10):
        est.observe_transfer(100_000, _transfer(100_000, 100e6, 5.0))
    seen = []
    for _ in range(3):
        est.observe_transfer(100_000, _transfer(100_000, 2e6, 5.0))
        seen.append(est.estimate().bandwidth_bps)
    assert seen[-1] < 4e6, f"after 3 requests on a 2 Mbit/s link the estimate is still {seen}"  # within 2x


def test_rtt_dominated_transfers_do_not_pollute_bandwidth():
    est = LinkEstimator()
    est.observe_rtt(50.0)
    est.observe_transfer(1_000_000, _transfer(1_000_000, 20e6, 50.0))
    before = est.estimate().bandwidth_bps
    est.observe_transfer(100, 50.5)  # a tiny request: all round trip
    assert est.estimate().bandwidth_bps == before


def test_a_fast_transfer_lifts_a_stale_slow_estimate():
    """On a link that came back fast, transfers are mostly round trip; they still prove a floor."""
    est = LinkEstimator()
    est.observe_rtt(10.0)
    for _ in range(5):
        est.observe_transfer(60_000, _transfer(60_000, 0.5e6, 10.0))
    est.observe_transfer(60_000, 11.0)  # 60 KB in 11 ms: at least 43 Mbit/s
    assert est.estimate().bandwidth_bps > 4e6


def test_unknown_until_observed_and_garbage_ignored():
    est = LinkEstimator()
    assert est.estimate().bandwidth_bps is None and est.estimate().rtt_ms is None
    for bad in (float("nan"), float("inf"), -1.0):
        est.observe_rtt(bad)
        est.observe_transfer(1000, bad)
    est.observe_transfer(0, 10.0)
    assert est.estimate().samples == 0


@given(
    bw=st.floats(1e5, 1e10),
    rtt=st.floats(0.1, 500),
    sizes=st.lists(st.integers(10_000, 10_000_000), min_size=1, max_size=20),
)
def test_exact_observations_never_overshoot_and_converge(bw, rtt, sizes):
    """Any transfer only ever proves the link at most as fast as it is; informative ones converge."""
    est = LinkEstimator()
    est.observe_rtt(rtt)
    for n in sizes:
        est.observe_transfer(n, _transfer(n, bw, rtt))
        e = est.estimate()
        assert e.rtt_ms == pytest.approx(rtt)
        assert e.bandwidth_bps is not None and e.bandwidth_bps <= bw * (1 + 1e-9)
    big = int(bw * rtt / 8e3) + 1  # transfer time at least the round trip: informative
    for _ in range(20):
        est.observe_transfer(big, _transfer(big, bw, rtt))
    assert est.estimate().bandwidth_bps == pytest.approx(bw, rel=1e-3)


def test_a_timeout_caps_the_estimate():
    """A link that became too slow for the deadline: requests time out, and that alone must tell."""
    est = LinkEstimator()
    est.observe_rtt(10.0)
    est.observe_transfer(100_000, _transfer(100_000, 100e6, 10.0))
    est.observe_timeout(300_000, 1000.0)  # 300 KB not across in a second: at most 2.4 Mbit/s
    assert est.estimate().bandwidth_bps == pytest.approx(2.4e6)
    est.observe_timeout(300_000, 100.0)  # a looser ceiling does not raise it
    assert est.estimate().bandwidth_bps == pytest.approx(2.4e6)
    est.observe_transfer(100_000, _transfer(100_000, 50e6, 10.0))  # answered again: a measurement, not a bound
    assert est.estimate().bandwidth_bps == pytest.approx(50e6, rel=0.01)


def test_two_far_samples_in_a_row_are_a_step_one_is_an_outlier():
    est = LinkEstimator(alpha=0.5, jump=3.0)
    est.observe_rtt(10.0)
    for _ in range(4):
        est.observe_transfer(500_000, _transfer(500_000, 100e6, 10.0))
    est.observe_transfer(500_000, _transfer(500_000, 2e6, 10.0))  # one slow sample: half way (in log)
    one = est.estimate().bandwidth_bps
    assert 10e6 < one < 20e6, one
    est.observe_transfer(500_000, _transfer(500_000, 100e6, 10.0))
    est.observe_transfer(500_000, _transfer(500_000, 100e6, 10.0))
    for _ in range(2):  # the link did drop: the second far sample is taken as it is
        est.observe_transfer(500_000, _transfer(500_000, 2e6, 10.0))
    assert est.estimate().bandwidth_bps == pytest.approx(2e6, rel=0.01)
