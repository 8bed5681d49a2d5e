"""Split policies choose by predicted cost on the estimated link, without flapping."""

from __future__ import annotations

import pytest

from edge.link import LinkEstimate
from edge.policy import Explore, LowestPredicted, Pinned
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


def test_explore_sends_one_in_every_n_while_local():
    p = Explore(LowestPredicted(COSTS, start="local", hysteresis=0.0), probe_split="mid", every=5)
    choices = [p.choose(est(0.1)) for _ in range(15)]
    assert choices.count("mid") == 3 and choices[4] == "mid" and p.current == "local"
    assert p.choose(est(1000)) == "cloud"


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="start split"):
        LowestPredicted(COSTS, start="nope")
    with pytest.raises(ValueError, match="probe split"):
        Explore(Pinned("mid"), probe_split="cloud")
