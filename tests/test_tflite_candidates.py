"""``split --candidates auto`` and ``plan`` on .tflite models: priced from LiteRT profiles, every Pareto split written.

The profiles are measured with LiteRT, then reshaped into a scenario where the
answer is known: an edge on which every operator after the cut is slow, and a
cloud on which everything is fast. Sending the cut (fewer bytes than the raw
float input) then wins at low bandwidths, where ``local`` is slow and the raw
input costs more on the wire.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from partitioner import Profile, plan, profile
from partitioner.pricing import Pricing
from partitioner.profile_boundary import Boundary
from partitioner.search import pareto
from partitioner.tflite.source import TfliteSource
from partitioner.verify import edge_then_cloud
from splitpoint.backends import load_session
from splitpoint.bundle import CLOUD, LOCAL, Bundle, slug
from splitpoint.cli import main
from splitpoint.cost import Link, SplitCost
from testbed import tflite_models as tm

CUTS = {"int8": "tfl.quantize", "float": tm.POOL_CUT}  # a quarter of the raw input's bytes; two thirds of it


def reshaped(measured: Profile, slow: set[int], ms: float) -> Profile:
    """``measured`` with ``ms`` per node in ``slow`` and nearly nothing elsewhere, and no boundary."""
    nodes = {i: replace(n, ms=ms if i in slow else 1e-3) for i, n in measured.nodes.items()}
    total = sum(n.ms for n in nodes.values())
    return replace(measured, nodes=nodes, end_to_end_ms=total + measured.call_overhead_ms, boundary=Boundary())


@pytest.fixture(scope="module", params=["int8", "float"])
def priced(request, tmp_path_factory) -> tuple[str, Path, Path, Path]:
    kind = request.param
    root = tmp_path_factory.mktemp(kind)
    model = tm.save(tm.int8_cnn() if kind == "int8" else tm.float_cnn(), root / f"{kind}.tflite")
    measured = profile(model, threads=1, runs=2, warmup=1)
    view = TfliteSource.open(model, None, lambda _: None).view
    after = set(view.order) - view.ancestors([CUTS[kind]])
    edge = reshaped(measured, after, 100.0)
    cloud = reshaped(measured, set(), 0.0)
    return kind, model, edge.save(root / "edge.json"), cloud.save(root / "cloud.json")


@pytest.fixture(scope="module")
def bundle(priced, tmp_path_factory) -> Bundle:
    kind, model, edge, cloud = priced
    out = tmp_path_factory.mktemp("bundles") / kind
    assert main(["split", str(model), "-o", str(out), "--candidates", "auto", "--edge-profile", str(edge),
                 "--cloud-profile", str(cloud), "--rtt-ms", "1"]) == 0
    return Bundle(out)


def test_every_pareto_split_is_written_verified_and_priced(bundle: Bundle, priced) -> None:
    kind, model, edge, cloud = priced
    m = bundle.manifest
    ids = [s.id for s in m.splits]
    cut_id = slug(CUTS[kind])
    assert ids[-2:] == [LOCAL, CLOUD] and cut_id in ids and m.default_split == cut_id
    source = TfliteSource.open(model, None, lambda _: None)
    pricing = Pricing.of(source, Profile.load(edge), Profile.load(cloud), m.codec, lambda _: None)
    assert {r.choice.id for r in pareto(pricing.cost_model, 1.0)} <= set(ids)
    x = {tm.INPUT: np.random.default_rng(5).standard_normal((1, 16, 16, 3)).astype(np.float32)}
    want = load_session(bundle.model_path()).run(x)[tm.OUTPUT]
    for s in m.splits:
        assert SplitCost.from_json(s.predicted).local == (s.id == LOCAL)
        if s.edge_file:
            assert s.edge_file.endswith(".tflite") and s.cloud_file.endswith(".tflite")
            assert s.verification["exact"]
            edge_s, cloud_s = load_session(bundle.path(s.edge_file)), load_session(bundle.path(s.cloud_file))
            np.testing.assert_array_equal(edge_then_cloud(edge_s, cloud_s, x)[tm.OUTPUT], want)
    costs = {s.id: SplitCost.from_json(s.predicted) for s in m.splits}
    assert min(costs, key=lambda i: costs[i].latency_ms(Link.parse("1mbit/1ms"))) == cut_id


def test_int8_cut_tensors_travel_as_int8(bundle: Bundle, priced) -> None:
    kind = priced[0]
    s = bundle.manifest.split(bundle.manifest.default_split)
    assert [(t.name, t.dtype) for t in s.cut] == [(CUTS[kind], "int8" if kind == "int8" else "float32")]


def test_the_profiles_go_into_the_bundle(bundle: Bundle, priced) -> None:
    _, _, edge, cloud = priced
    for rel, original in zip(bundle.manifest.profiles, (edge, cloud)):
        assert json.loads(bundle.path(rel).read_text()) == json.loads(original.read_text())


def test_plan_over_a_tflite_model(priced) -> None:
    kind, model, edge, cloud = priced
    p = plan(model, ["1mbit/1ms", "10gbit/0.1ms"], edge_profile=edge, cloud_profile=cloud)
    slow, fast = p.links
    assert slow.best.at == (CUTS[kind],)
    assert fast.best.id != LOCAL and fast.speedup(fast.result.local) > 10  # the edge's slow operators stay off it
    assert p.to_json()["profiles"]["edge"]["backend"] == "litert"
    local = next(c for c in p.splits if c.id == LOCAL)
    assert local.edge_mb > 2.5e-3  # the weights count: the int8 model holds 2.9 KB of them, the float one more
    assert "(11 nodes)" in p.to_text() or "(9 nodes)" in p.to_text()


def test_a_profile_of_another_model_is_refused_for_a_tflite_model(priced, demo_model: Path, tmp_path: Path,
                                                                   capsys) -> None:
    _, model, edge, _ = priced
    other = profile(demo_model, threads=1, runs=1, warmup=0).save(tmp_path / "onnx.json")
    assert main(["plan", str(model), "--edge-profile", str(edge), "--cloud-profile", str(other)]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"error: profile {other} was measured on model sha256 ")
