"""The boundary term: fitted on real segments while profiling, kept in the JSON, paid by every split that sends tensors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from partitioner import Profile, profile
from partitioner.costmodel import CostModel
from partitioner.cuts import resolve_cut
from partitioner.profile_boundary import Boundary, BoundaryCut, _slope
from partitioner.search import Constraints, best_split
from partitioner.source import Source
from splitpoint.bundle import CLOUD, LOCAL
from splitpoint.cost import Link
from testbed.demo import CUT


@pytest.fixture(scope="module")
def demo_profile(demo_model: Path) -> Profile:
    return profile(demo_model, threads=1, runs=3, warmup=1)


def test_the_fit_is_least_squares_through_the_origin_and_never_negative() -> None:
    assert _slope([1.0, 2.0], [0.5, 1.0]) == pytest.approx(0.5)
    assert _slope([1.0, 3.0], [1.0, 1.0]) == pytest.approx(4 / 10)
    assert _slope([1.0, 2.0], [-0.5, -1.0]) == 0.0  # a split running faster than its nodes is noise, not a discount
    assert _slope([], []) == 0.0


def test_profiling_times_real_segments_and_records_them(demo_profile: Profile) -> None:
    b = demo_profile.boundary
    assert 1 <= len(b.cuts) <= 3
    biggest = max(b.cuts, key=lambda c: c.mb)
    assert biggest.mb == pytest.approx(2 * 16 * 64 * 64 * 4 / 1e6)  # the two tensors crossing inside the residual block
    for c in b.cuts:
        assert c.prefix_ms > 0 and c.suffix_ms > 0 and c.prefix_predicted_ms > 0 and c.suffix_predicted_ms > 0
    assert b.out_ms_per_mb >= 0 and b.in_ms_per_mb >= 0
    residual = [c.suffix_ms - c.suffix_predicted_ms for c in b.cuts]
    assert b.in_ms_per_mb == pytest.approx(_slope([c.mb for c in b.cuts], residual), abs=1e-5)


def test_the_boundary_round_trips_and_old_profiles_have_none(demo_profile: Profile, tmp_path: Path) -> None:
    path = demo_profile.save(tmp_path / "p.json")
    raw = json.loads(path.read_text())
    assert set(raw["boundary"]) == {"out_ms_per_mb", "in_ms_per_mb", "cuts"}
    assert Profile.load(path).boundary.cuts == tuple(
        BoundaryCut(c.sent, *(round(getattr(c, k), 6) for k in ("mb", "prefix_ms", "prefix_predicted_ms", "suffix_ms",
                                                                 "suffix_predicted_ms"))) for c in demo_profile.boundary.cuts)
    del raw["boundary"]
    path.write_text(json.dumps(raw))
    assert Profile.load(path).boundary == Boundary()


def test_splits_pay_the_boundary_per_mb_on_both_sides(demo_profile: Profile, demo_model: Path) -> None:
    source = Source.open(demo_model, None, lambda _: None)
    flat = replace(demo_profile, boundary=Boundary())
    priced = replace(demo_profile, boundary=Boundary(out_ms_per_mb=2.0, in_ms_per_mb=3.0))
    cut = resolve_cut(source.view, CUT)
    mb = 2 * 16 * 64 * 64 * 4 / 1e6
    without = CostModel.build(source, flat, flat, "raw", lambda _: None).cost(cut.prefix)
    model = CostModel.build(source, priced, priced, "raw", lambda _: None)
    with_boundary = model.cost(cut.prefix)
    assert with_boundary.edge_ms - without.edge_ms == pytest.approx(2.0 * mb)
    assert with_boundary.cloud_ms - without.cloud_ms == pytest.approx(3.0 * mb)
    assert with_boundary.local_suffix_ms - without.local_suffix_ms == pytest.approx(3.0 * mb)
    assert model.cost(frozenset()).cloud_ms == pytest.approx(priced.segment_ms(source.view.order))  # raw inputs: none
    assert model.cost(model.nodes).edge_ms == pytest.approx(priced.segment_ms(source.view.order))  # local: none


def test_a_costly_boundary_moves_the_min_cut_away_from_big_tensors(demo_profile: Profile, demo_model: Path) -> None:
    """A slow edge that may not send the raw input cuts early; when crossing is dear, where little crosses (or not at all)."""
    source = Source.open(demo_model, None, lambda _: None)
    edge = replace(demo_profile, nodes={i: replace(n, ms=n.ms * 50) for i, n in demo_profile.nodes.items()},
                   end_to_end_ms=demo_profile.end_to_end_ms * 50, boundary=Boundary())
    link, private = Link.parse("10gbit/0.1ms"), Constraints(no_raw_inputs=True)
    free_model = CostModel.build(source, edge, demo_profile, "raw", lambda _: None)
    free = best_split(free_model, link, constraints=private).best
    costly = replace(demo_profile, boundary=Boundary(in_ms_per_mb=1e4))
    paid = best_split(CostModel.build(source, edge, costly, "raw", lambda _: None), link, constraints=private).best
    assert free.id not in (LOCAL, CLOUD) and paid.id != CLOUD
    sizes = free_model.transfers.sizes
    assert sum(sizes[t] for t in paid.sent) < sum(sizes[t] for t in free.sent) / 100  # local, or a late tiny cut
    assert len(paid.prefix) > len(free.prefix)
