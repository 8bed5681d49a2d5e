"""Lossy codecs, checked on calibration inputs: agreement reported, splits under the threshold not offered or refused.

The refusal case is a model built so that int8 per-tensor must fail at one cut
for a known reason: ``wide`` carries one channel offset by 1e4, which sets the
per-tensor scale so coarse that the small channels the classifier reads all
quantise to zero. The same cut passes with int8-channel (one scale per channel),
and the cuts before and after it pass with int8.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from partitioner import Constraints, PartitionError, plan, profile, split
from partitioner.profile import Profile
from splitpoint.bundle import Bundle
from splitpoint.cli import main


def wide_range_model(path: Path) -> Path:
    """x[N,16] -> MatMul -> Relu -> features -> + offset (channel 0: 1e4) -> wide -> MatMul (ignores channel 0) -> Relu
    -> MatMul -> logits[N,10]."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((16, 32)) / 4).astype(np.float32)
    offset = np.zeros(32, np.float32)
    offset[0] = 1e4
    w2 = (rng.standard_normal((32, 256)) / 4).astype(np.float32)
    w2[0] = 0.0
    w3 = (rng.standard_normal((256, 10)) / 16).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["hidden"]),
        helper.make_node("Relu", ["hidden"], ["features"]),
        helper.make_node("Add", ["features", "offset"], ["wide"]),
        helper.make_node("MatMul", ["wide", "w2"], ["head"]),
        helper.make_node("Relu", ["head"], ["head_relu"]),
        helper.make_node("MatMul", ["head_relu", "w3"], ["logits"]),
    ]
    weights = [numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (offset, "offset"), (w2, "w2"), (w3, "w3")]]
    graph = helper.make_graph(nodes, "wide_range", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("wide")
    np.savez(root / "calibration.npz", x=np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32))
    return wide_range_model(root / "wide.onnx"), root / "calibration.npz"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Structured images for the demo CNN: oriented sinusoidal gratings plus a little noise, per channel."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    samples = []
    for _ in range(24):
        freq, phase = rng.uniform(1, 4, (3, 2)), rng.uniform(0, 2 * np.pi, 3)
        grating = np.stack([np.sin(2 * np.pi * (f[0] * xx + f[1] * yy) + p) for f, p in zip(freq, phase)])
        samples.append(grating + 0.1 * rng.standard_normal((3, 64, 64)))
    path = tmp_path_factory.mktemp("images") / "images.npz"
    np.savez(path, image=np.asarray(samples, np.float32))
    return path


def test_a_split_int8_cannot_carry_is_refused_and_nothing_is_written(wide, tmp_path: Path) -> None:
    model, calibration = wide
    with pytest.raises(PartitionError) as e:
        split(model, tmp_path / "b", at="wide", codec="int8", calibration=calibration)
    assert re.fullmatch(r"split 'wide' is refused: --min-agreement 0\.99: top-1 agreement 0\.\d{3} with int8 on 64 "
                        r"calibration sample\(s\); cut elsewhere or use a finer codec \(int8-channel, fp16\)", str(e.value))
    assert float(re.search(r"top-1 agreement (\S+)", str(e.value)).group(1)) < 0.5
    assert not (tmp_path / "b").exists()
    # the cause is the cut's range under one scale: per-channel scales carry it, and int8 carries the cuts around it
    for at, codec in [("wide", "int8-channel"), ("features", "int8"), ("head", "int8")]:
        bundle = split(model, tmp_path / f"{at}-{codec}", at=at, codec=codec, calibration=calibration)
        record = bundle.manifest.splits[0].verification["calibration"]
        assert record["offered"] and record["top1"] >= 0.99 and record["codec"] == codec and record["samples"] == 64
        local = bundle.manifest.split("local").verification["calibration"]
        assert local["top1"] == 1.0 and local["max_rel"] == 0.0


def test_max_rel_error_is_a_second_threshold(wide, tmp_path: Path) -> None:
    model, calibration = wide
    with pytest.raises(PartitionError, match=r"split 'features' is refused: --max-rel-error 1e-06: max_rel \S+ with int8"):
        split(model, tmp_path / "b", at="features", codec="int8", calibration=calibration, max_rel_error=1e-6)


def _scaled(p: Profile, k: float, path: Path) -> Path:
    nodes = {i: replace(n, ms=n.ms * k) for i, n in p.nodes.items()}
    return replace(p, nodes=nodes, end_to_end_ms=p.end_to_end_ms * k).save(path)


def test_the_plan_does_not_offer_a_refused_split_and_says_so(wide, tmp_path: Path) -> None:
    """A slow edge and a privacy floor of three nodes make ``wide`` the optimum; int8 refuses it, int8-channel not."""
    model, calibration = wide
    measured = profile(model, threads=1, runs=3, warmup=1)
    edge, cloud = _scaled(measured, 1000, tmp_path / "edge.json"), measured.save(tmp_path / "cloud.json")
    floor = Constraints(min_edge_ops=3)
    checked = plan(model, ["1gbit/0.1ms"], edge, cloud, codec="int8", constraints=floor, calibration=calibration)
    best = checked.links[0]
    assert best.best.id != "wide"
    assert any(n.startswith("the optimal split wide breaks --min-agreement 0.99: top-1 agreement") for n in best.result.notes)
    assert all(r.choice.id != "wide" for r in checked.sweep)
    d = json.loads(json.dumps(checked.to_json()))
    assert d["calibration"]["codec"] == "int8" and d["calibration"]["samples"] == 64
    assert d["calibration"]["classifier_outputs"] == ["logits"]
    by_id = {s["id"]: s for s in d["calibration"]["splits"]}
    assert not by_id["wide"]["offered"] and by_id["wide"]["top1"] < 0.5 and by_id["wide"]["refused"]
    assert by_id["local"]["offered"] and by_id[best.best.id]["offered"]
    assert {s["id"] for s in d["splits"]} <= set(by_id)  # every split shown says how it fared
    text = checked.to_text()
    assert "calibration: 64 sample(s) from calibration.npz, codec int8" in text
    assert re.search(r"\n  wide +0\.\d{3} .* no: --min-agreement 0\.99", text)

    channel = plan(model, ["1gbit/0.1ms"], edge, cloud, codec="int8-channel", constraints=floor, calibration=calibration)
    assert channel.links[0].best.id == "wide" and not channel.links[0].result.notes


def test_demo_cnn_with_int8_keeps_its_answers_and_reports_them(demo_model: Path, images: Path, tmp_path: Path,
                                                              capsys) -> None:
    out = tmp_path / "plan.json"
    args = ["plan", str(demo_model), "--codec", "int8", "--calibration", str(images), "--link", "1gbit/0.1ms",
            "--json", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "calibration: 24 sample(s) from images.npz, codec int8; a split is offered when top-1 agreement >= 0.99" in printed
    d = json.loads(out.read_text())["calibration"]
    assert {"cloud", "local"} <= {s["id"] for s in d["splits"]}
    for s in d["splits"]:
        assert s["offered"] and s["top1"] >= 0.99 and s["max_rel"] < 0.05, s

    bundle = Bundle(split(demo_model, tmp_path / "b", at=[["pool.out"], ["stem.relu", "block.relu1"]], codec="int8",
                          calibration=images).root)
    for s in bundle.manifest.splits:
        record = s.verification["calibration"]
        assert record["offered"] and record["top1"] >= 0.99, (s.id, record)
        assert s.id == "local" or 0 < record["max_rel"] < 0.05  # lossy, yet the classes stay


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"calibration {file}: no such file"),
        ("npy", r"calibration {file}: not an \.npz archive \(it holds a single array\); save one with numpy\.savez.*"),
        ({"image": np.zeros((2, 3, 64, 64), np.float32), "extra": np.zeros(2)},
         r"calibration {file}: 'extra' is not an input of the model \(inputs: image\)"),
        ({}, r"calibration {file}: no array for input 'image' \(inputs: image\)"),
        ({"image": np.zeros((2, 3, 64, 64))},
         r"calibration {file}: 'image' is float64, the model's input is float32\[N,3,64,64\]"),
        ({"image": np.zeros((3, 64, 64), np.float32)},
         r"calibration {file}: 'image' has shape \[3, 64, 64\], the model's input is float32\[N,3,64,64\] "
         r"\(samples along the first axis\)"),
        ({"image": np.zeros((0, 3, 64, 64), np.float32)}, r"calibration {file}: no samples \(the arrays' first axis is empty\)"),
    ],
    ids=["missing", "npy", "extra", "absent", "dtype", "shape", "empty"],
)
def test_calibration_files_that_do_not_fit_get_one_line(demo_model: Path, tmp_path: Path, capsys, content, message) -> None:
    path = tmp_path / "cal.npz"
    if content == "npy":
        with path.open("wb") as f:
            np.save(f, np.zeros((2, 3, 64, 64), np.float32))
    elif content is not None:
        np.savez(path, **content)
    assert main(["split", str(demo_model), "-o", str(tmp_path / "b"), "--at", "pool.out", "--codec", "int8",
                 "--calibration", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.fullmatch("error: " + message.format(file=re.escape(str(path))), err[0]), err


def test_thresholds_are_checked_before_any_work(demo_model: Path, tmp_path: Path) -> None:
    with pytest.raises(PartitionError, match=r"--min-agreement 1\.5: must be between 0 and 1"):
        plan(demo_model, ["1gbit/1ms"], calibration=tmp_path / "none.npz", min_agreement=1.5)
    with pytest.raises(PartitionError, match=r"--max-rel-error 0: must be positive"):
        split(demo_model, tmp_path / "b", calibration=tmp_path / "none.npz", max_rel_error=0)
