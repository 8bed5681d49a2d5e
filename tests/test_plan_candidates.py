"""``split --candidates auto``: every split that is fastest for some bandwidth, priced in the manifest.

The model downsamples a large input cheaply and then computes a lot on the small
tensor, so with a fast cloud the cut after the downsampling wins at middle
bandwidths, between ``local`` (slow links) and the raw input (very fast ones).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from partitioner import Profile, profile, split
from partitioner.search import pareto
from splitpoint.bundle import Bundle
from splitpoint.cli import main
from splitpoint.cost import Link, SplitCost


def pooled_cnn(path: Path) -> Path:
    rng = np.random.default_rng(0)
    inits = []

    def conv(name: str, x: str, cin: int, cout: int) -> onnx.NodeProto:
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{name}.w"))
        return helper.make_node("Conv", [x, f"{name}.w"], [name], name=name, pads=[1, 1, 1, 1])

    nodes = [helper.make_node("AveragePool", ["image"], ["pooled"], name="pool", kernel_shape=[4, 4], strides=[4, 4]),
             conv("c0", "pooled", 3, 64), helper.make_node("Relu", ["c0"], ["r0"], name="r0")]
    for k in range(1, 4):
        nodes += [conv(f"c{k}", f"r{k - 1}", 64, 64), helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"r{k}")]
    nodes += [helper.make_node("GlobalAveragePool", ["r3"], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["logits"], name="flatten")]
    graph = helper.make_graph(nodes, "pooled", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 128, 128])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 64])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


# Edge times in ms: the pooling is cheap, the convolutions on the pooled tensor are not. The profile is taken
# for real (nodes, fusions, kernels) and its times are then set, so which cut wins does not hang on how fast,
# or how busy, this CPU is.
EDGE_MS = {"pool": 0.05, "c0": 0.1, "c1": 0.5, "c2": 0.5, "c3": 0.5, "gap": 0.01}


@pytest.fixture(scope="module")
def priced(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("pooled")
    model = pooled_cnn(root / "pooled.onnx")
    measured = profile(model, threads=1, runs=5, warmup=2)
    nodes = {i: replace(n, ms=EDGE_MS.get(n.name, 0.0) if n.fused_into is None and not n.removed else 0.0)
             for i, n in measured.nodes.items()}
    edge = replace(measured, nodes=nodes, end_to_end_ms=sum(n.ms for n in nodes.values()))
    k = 20  # a cloud 20x faster than this machine's single thread
    cloud = replace(edge, nodes={i: replace(n, ms=n.ms / k) for i, n in edge.nodes.items()},
                    end_to_end_ms=edge.end_to_end_ms / k)
    return model, edge.save(root / "edge.json"), cloud.save(root / "cloud.json")


@pytest.fixture(scope="module")
def bundle(priced, tmp_path_factory) -> Bundle:
    model, edge, cloud = priced
    out = tmp_path_factory.mktemp("bundles") / "pooled"
    assert main(["split", str(model), "-o", str(out), "--candidates", "auto", "--edge-profile", str(edge),
                 "--cloud-profile", str(cloud), "--rtt-ms", "1"]) == 0
    return Bundle(out)


def test_the_bundle_holds_the_splits_that_win_somewhere_with_predicted_costs(bundle: Bundle) -> None:
    m = bundle.manifest
    ids = [s.id for s in m.splits]
    assert ids[-2:] == ["local", "cloud"]
    assert "pooled" in ids  # the cut after the cheap downsampling
    for s in m.splits:
        cost = SplitCost.from_json(s.predicted)
        assert cost.local == (s.id == "local")
        if s.edge_file:
            assert s.verification["ratio"] <= 1
    assert m.default_split in ids
    slow, fast = Link.parse("0.1mbit/1ms"), Link.parse("1gbit/1ms")
    costs = {s.id: SplitCost.from_json(s.predicted) for s in m.splits}
    assert min(costs, key=lambda i: costs[i].latency_ms(slow)) == "local"
    assert min(costs, key=lambda i: costs[i].latency_ms(fast)) == "pooled"


def test_profiles_are_copied_into_the_bundle(bundle: Bundle, priced) -> None:
    assert bundle.manifest.profiles == ("profiles/edge.json", "profiles/cloud.json")
    _, edge, cloud = priced
    for rel, original in zip(bundle.manifest.profiles, (edge, cloud)):
        assert json.loads(bundle.path(rel).read_text()) == json.loads(original.read_text())


def test_the_candidates_are_the_sweep_winners(bundle: Bundle, priced) -> None:
    from partitioner.pricing import Pricing
    from partitioner.source import Source

    model, edge, cloud = priced
    source = Source.open(model, None, lambda _: None)
    pricing = Pricing.of(source, Profile.load(edge), Profile.load(cloud), bundle.manifest.codec, lambda _: None)
    winners = {r.choice.id for r in pareto(pricing.cost_model, 1.0)}
    assert winners <= {s.id for s in bundle.manifest.splits}
    assert "pooled" in winners


def test_explicit_cuts_stay_first_and_get_predictions_too(priced, tmp_path: Path) -> None:
    model, edge, cloud = priced
    b = split(model, tmp_path / "b", at=["r1"], candidates="auto", edge_profile=edge, cloud_profile=cloud, rtt_ms=1.0)
    m = b.manifest
    assert m.splits[0].id == m.default_split == "r1"
    assert all(s.predicted for s in m.splits)
    plain = split(model, tmp_path / "c", at=["r1"], edge_profile=edge, cloud_profile=cloud)
    assert [s.id for s in plain.manifest.splits] == ["r1", "local", "cloud"]  # priced, no candidates added
    assert all(s.predicted for s in plain.manifest.splits)
