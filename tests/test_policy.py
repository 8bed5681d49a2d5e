"""Split policies choose by predicted cost on the estimated link, without flapping."""

from __future__ import annotations

import pytest

from edge.link import LinkEstimate
from edge.policy import Explore, LowestPredicted, Pinned
from edge.speed import Speed, SpeedEstimator
from splitpoint.cost import SplitCost

# A prefix that shrinks the data 20x but costs edge time, against sending raw inputs.
COSTS = {
    "local": SplitCost(edge_ms=40.0, local=True),
    "mid": SplitCost(edge_ms=10.0, cloud_ms=3.0, local_suffix_ms=30.0, sent_bytes=25_000, response_bytes=40),
    "cloud": SplitCost(edge_ms=0.0, cloud_ms=5.0, local_suffix_ms=40.0, sent_bytes=500_000, response_bytes=40),
}


def est(mbit: float | None, rtt: float | None = 10.0) -> LinkEstimate:
    return LinkEstimate(None if mbit is None else mbit * 1e6, rtt, 1)


def test_pinned_never_moves():
    p = Pinned("mid")
    assert [p.choose(est(x)) for x in (None, 0.1, 1000)] == ["mid"] * 3 and p.candidates == ["mid"]


@pytest.mark.parametrize("mbit, best", [(0.5, "local"), (20, "mid"), (1000, "cloud")])
def test_lowest_predicted_follows_the_link(mbit, best):
    p = LowestPredicted(COSTS, start="mid", hysteresis=0.0)
    assert p.choose(est(mbit)) == best
    scores = p.predicted(est(mbit))
    assert scores[best] == min(scores.values())


def test_unknown_link_keeps_the_start_split():
    p = LowestPredicted(COSTS, start="mid")
    assert p.choose(est(None)) == "mid" and p.choose(est(100, rtt=None)) == "mid"


def test_hysteresis_prevents_flapping_near_a_tie():
    # mid vs cloud with rtt 10: mid = 10+3+10+25040*8/bw, cloud = 5+10+500040*8/bw; equal near bw = 475 Mbit/s
    p = LowestPredicted(COSTS, start="mid", hysteresis=0.15)
    choices = [p.choose(est(bw)) for bw in (450, 500, 460, 490, 470, 480)]
    assert choices == ["mid"] * 6
    assert p.choose(est(100_000)) == "cloud"  # a clear win still switches
    assert p.choose(est(460)) == "cloud"  # and it stays there near the tie


def test_explore_asks_for_one_probe_in_every_n_while_local():
    p = Explore(LowestPredicted(COSTS, start="local", hysteresis=0.0), probe_split="mid", every=5)
    choices, probes = [], []
    for _ in range(15):
        choices.append(p.choose(est(0.1)))
        probes.append(p.take_probe())
    assert choices == ["local"] * 15 and p.current == "local"  # the requests themselves stay local
    assert probes.count("mid") == 3 and probes[0] == probes[5] == "mid" and probes[4] is None  # at once, then every 5
    assert p.take_probe() is None  # a probe is taken once
    assert p.choose(est(1000)) == "cloud" and p.take_probe() is None
    assert Pinned("mid").take_probe() is None and LowestPredicted(COSTS, start="mid").take_probe() is None


def test_lowest_predicted_scales_compute_by_the_measured_speed():
    """At 20 Mbit/s "mid" wins as profiled; on an edge 10x faster than profiled, local (4 ms) does."""
    assert LowestPredicted(COSTS, start="mid", hysteresis=0.0).choose(est(20)) == "mid"
    fast_edge = LowestPredicted(COSTS, start="mid", hysteresis=0.0, speed=lambda: Speed(edge=0.1))
    assert fast_edge.choose(est(20)) == "local"
    slow_cloud = LowestPredicted(COSTS, start="mid", hysteresis=0.0, speed=lambda: Speed(cloud=10.0))
    assert slow_cloud.predicted(est(1000))["cloud"] == pytest.approx(50.0 + 500_040 * 8 / 1e9 * 1e3 + 10.0)


def test_speed_estimator_follows_a_lasting_change_not_spikes():
    s = SpeedEstimator(window=9)
    assert s.estimate() == Speed(1.0, 1.0)
    for i in range(12):
        s.observe("edge", 10.0, 40.0)  # a device 4x slower than its profile
        s.observe("cloud", 0.1, 50.0)  # too small a prediction to compare: ignored
        s.observe("cloud", 20.0, 200.0 if i % 4 == 0 else 20.0)  # a worker that stalls now and then
    assert s.estimate().edge == pytest.approx(4.0) and s.estimate().cloud == pytest.approx(1.0)
    for _ in range(5):
        s.observe("cloud", 20.0, 60.0)  # now lastingly 3x slower: seen within half a window
    assert s.estimate().cloud == pytest.approx(3.0)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="start split"):
        LowestPredicted(COSTS, start="nope")
    with pytest.raises(ValueError, match="probe split"):
        Explore(Pinned("mid"), probe_split="cloud")
