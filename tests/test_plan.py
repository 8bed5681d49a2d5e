"""Plans: best split per link with its breakdown and speedups, the JSON and the PNG, constraints, errors.

The edge profile is measured here; the cloud profile is the same one made 20x
faster (a server-class machine), so that splitting pays on some links.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from partitioner import Constraints, PartitionError, plan, profile
from partitioner.profile import Profile
from splitpoint.cli import main
from splitpoint.cost import Link, SplitCost

LINKS = ["1mbit/60ms", "100mbit/5ms", "1gbit/0.1ms"]


def faster(p: Profile, k: float, path: Path) -> Path:
    nodes = {i: replace(n, ms=n.ms / k) for i, n in p.nodes.items()}
    return replace(p, nodes=nodes, end_to_end_ms=p.end_to_end_ms / k, backend={**p.backend, "threads": 8}).save(path)


@pytest.fixture(scope="module")
def profiles(demo_model: Path, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("profiles")
    edge = profile(demo_model, threads=1, runs=5, warmup=2)
    return edge.save(root / "edge.json"), faster(edge, 20, root / "cloud.json")


@pytest.fixture(scope="module")
def demo_plan(demo_model: Path, profiles):
    return plan(demo_model, LINKS, *profiles)


def test_each_link_gets_its_best_split_with_breakdown_and_speedups(demo_plan) -> None:
    assert [str(lp.link) for lp in demo_plan.links] == ["1mbit/60ms", "100mbit/5ms", "1000mbit/0.1ms"]
    for lp in demo_plan.links:
        latencies = {c.id: c.cost.latency_ms(lp.link) for c in demo_plan.splits}
        assert lp.best.cost.latency_ms(lp.link) == pytest.approx(min(latencies.values()))
        b = lp.best.cost.breakdown(lp.link)
        assert b.total_ms == pytest.approx(lp.best.cost.latency_ms(lp.link))
        assert lp.speedup(lp.result.local) >= 1 - 1e-9
    assert demo_plan.links[0].best.id == "local"  # 60 ms RTT: nothing beats the local 1-2 ms
    text = demo_plan.to_text()
    for link in ["1mbit/60ms", "100mbit/5ms", "1000mbit/0.1ms", "vs local", "vs cloud", "--at", "best split by bandwidth"]:
        assert link in text


def test_the_sweep_covers_the_bandwidths_and_agrees_with_the_per_link_search(demo_plan) -> None:
    regions = demo_plan.sweep
    assert regions[0].low_bps == pytest.approx(0.1e6) and regions[-1].high_bps == pytest.approx(1000e6)
    for a, b in zip(regions, regions[1:]):
        assert a.high_bps == pytest.approx(b.low_bps)
        assert a.choice.prefix != b.choice.prefix
    for r in regions:  # in the middle of its region, the region's split is the best of all splits shown
        link = Link(float(np.sqrt(r.low_bps * r.high_bps)), demo_plan.sweep_rtt_ms)
        best = min(c.cost.latency_ms(link) for c in demo_plan.splits)
        assert r.choice.cost.latency_ms(link) == pytest.approx(best)


def test_json_has_the_documented_structure(demo_plan) -> None:
    d = json.loads(json.dumps(demo_plan.to_json()))
    assert d["format"] == "splitpoint-plan" and d["version"] == 1
    assert set(d) == {"format", "version", "model", "codec", "objective", "constraints", "profiles", "splits", "links",
                      "sweep", "notes"}
    assert set(d["profiles"]) == {"edge", "cloud"} and d["profiles"]["edge"]["threads"] == 1
    ids = {s["id"] for s in d["splits"]}
    assert {"local", "cloud"} <= ids
    for s in d["splits"]:
        assert set(s) == {"id", "at", "sent", "edge_nodes", "cloud_nodes", "edge_memory_mb", "predicted"}
        SplitCost.from_json(s["predicted"])
    for link in d["links"]:
        assert link["best"] in ids
        assert set(link["breakdown"]) == {"edge_ms", "transfer_ms", "cloud_ms"}
        assert link["latency_ms"] == pytest.approx(sum(link["breakdown"].values()))
        assert link["speedup_vs_local"] >= 1 - 1e-9
        assert set(link["latency_ms_by_split"]) == ids
    assert all(r["split"] in ids for r in d["sweep"]["regions"])


def test_cli_plan_writes_json_and_a_real_picture(demo_model: Path, profiles, tmp_path: Path, capsys) -> None:
    import matplotlib.image

    edge, cloud = profiles
    out_json, out_png = tmp_path / "plan.json", tmp_path / "plan.png"
    args = ["plan", str(demo_model), "--edge-profile", str(edge), "--cloud-profile", str(cloud),
            *(a for link in LINKS for a in ("--link", link)), "--json", str(out_json), "--plot", str(out_png)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "1mbit/60ms" in printed and f"wrote {out_png}" in printed
    assert json.loads(out_json.read_text())["format"] == "splitpoint-plan"
    assert out_png.stat().st_size > 30_000
    pixels = matplotlib.image.imread(out_png)
    assert pixels.ndim == 3 and pixels.shape[0] > 500 and pixels.shape[1] > 800
    colours = {tuple(c) for c in np.round(pixels[..., :3].reshape(-1, 3), 2)[:: 7]}
    assert len(colours) > 20  # bars in three colours, shaded regions, text: not a blank canvas


def test_without_profiles_this_machine_is_profiled_and_the_plan_says_so(demo_model: Path, capsys) -> None:
    assert main(["plan", str(demo_model), "--link", "10mbit/30ms"]) == 0
    out = capsys.readouterr().out
    assert "note: no --edge-profile: profiled this machine as the edge (1 thread(s)" in out
    assert "note: no --cloud-profile: profiled this machine as the cloud" in out
    assert "edge profile: measured here for this plan" in out


def test_a_profile_of_another_model_is_refused_in_one_line(tmp_path: Path, profiles, capsys) -> None:
    from testbed.models import save_demo_cnn

    other = save_demo_cnn(tmp_path / "other.onnx", seed=7)
    edge, cloud = profiles
    assert main(["plan", str(other), "--edge-profile", str(edge), "--cloud-profile", str(cloud)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress lines
    assert re.fullmatch(rf"error: profile {re.escape(str(edge))} was measured on model sha256 [0-9a-f]{{12}}\.\., "
                        r"not this model \([0-9a-f]{12}\.\.\)", last)


def test_privacy_and_memory_constraints(demo_model: Path, profiles) -> None:
    fast = Link.parse("1gbit/0.1ms")
    private = plan(demo_model, [fast], *profiles, constraints=Constraints(min_edge_ops=3, no_raw_inputs=True))
    best = private.links[0].best
    assert best.id != "cloud" and "image" not in best.sent
    assert best.id == "local" or {0, 1, 2} <= best.prefix
    tight = plan(demo_model, [fast], *profiles, constraints=Constraints(edge_memory_mb=0.05))
    assert tight.links[0].best.edge_mb <= 0.05
    assert any("--edge-memory-mb" in n for n in tight.notes)


def test_objectives(demo_model: Path, profiles) -> None:
    cloud = plan(demo_model, ["1gbit/0.1ms"], *profiles, objective="cloud")
    assert cloud.links[0].best.id == "local"  # no cloud compute at all
    energy = plan(demo_model, ["1gbit/0.1ms"], *profiles, objective="energy")
    assert energy.objective.unit == "mJ"
    assert "mJ" in energy.to_text()
    with pytest.raises(PartitionError, match="--objective speed: unknown"):
        plan(demo_model, ["1gbit/0.1ms"], *profiles, objective="speed")
