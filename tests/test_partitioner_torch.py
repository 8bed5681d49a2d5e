"""Done when: split works on ResNet- and MobileNetV2-like torch models from both ONNX exporters."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from partitioner import PartitionError, inspect, split
from partitioner.verify import edge_then_cloud
from splitpoint.backends import load_session
from splitpoint.compare import array_difference

pytest.importorskip("torch")
zoo = pytest.importorskip("testbed.zoo")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["resnet_like", "mobilenet_v2_like"])
def net(request: pytest.FixtureRequest):
    return getattr(zoo, request.param)()


@pytest.fixture(scope="module", params=[False, True], ids=["legacy", "dynamo"])
def exported(request: pytest.FixtureRequest, net, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zoo") / f"{type(net).__name__}.onnx"
    zoo.export_onnx(net, path, dynamo=request.param)
    assert path.with_name(path.name + ".data").is_file() == request.param  # dynamo keeps weights beside
    return path


def test_single_multi_and_auto_cuts_reproduce_the_model(exported: Path, tmp_path: Path) -> None:
    report = inspect(exported)
    single = next(c for c in report.candidates if len(c.tensors) == 1 and c.balanced)
    multi = [c for c in report.candidates if len(c.tensors) > 1]
    assert multi, "residual blocks give multi-tensor candidates"
    bundle = split(exported, tmp_path / "b", at=[single.names, multi[len(multi) // 2].names, ["auto"]])
    splits = [s for s in bundle.manifest.splits if s.edge_file]
    assert len(splits) >= 2 and any(len(s.cut) > 1 for s in splits)
    assert all(s.verification["ratio"] <= 1 for s in splits)
    assert not list(bundle.root.rglob("*.data"))  # small models are bundled with their weights embedded
    x = {"x": np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32)}
    reference = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"]).run(None, x)[0]
    for s in splits:
        got = edge_then_cloud(load_session(bundle.path(s.edge_file)), load_session(bundle.path(s.cloud_file)), x)
        assert array_difference(reference, got["logits"]).ok


def test_a_cut_inside_a_block_suggests_the_complete_cut(exported: Path, tmp_path: Path) -> None:
    """The first residual block's inner activation alone leaves the skip uncut; the suggestion works."""
    report = inspect(exported)
    skip = next(c for c in report.candidates if len(c.tensors) == 2)
    inner = skip.names[-1]
    with pytest.raises(PartitionError, match="does not separate the graph") as e:
        split(exported, tmp_path / "b", at=inner)
    suggested = re.search(r"use --at (\S+)$", str(e.value)).group(1)
    assert set(suggested.split(",")) == set(skip.names)
    bundle = split(exported, tmp_path / "b", at=suggested)
    assert bundle.manifest.splits[0].verification["ratio"] <= 1


def test_legacy_transformer_cut_sends_activations_not_weights(tmp_path: Path) -> None:
    """The legacy exporter passes shared LayerNorm weights through Identity nodes; the automatic cut
    used to send them beside the hidden state. Each side keeps its own copy now."""
    import onnx

    path = zoo.export_transformer_onnx(zoo.transformer_encoder_like(), tmp_path / "t.onnx", dynamo=False)
    model = onnx.load(path)
    weights = {t.name for t in model.graph.initializer}
    passed_on = {n.output[0] for n in model.graph.node if n.op_type == "Identity" and n.input[0] in weights}
    assert passed_on  # the exporter still writes them: otherwise this test proves nothing
    bundle = split(path, tmp_path / "b", candidates="auto")
    cuts = [s for s in bundle.manifest.splits if s.edge_file and s.cloud_file]
    assert cuts
    for s in cuts:
        assert not set(s.sent_names) & (passed_on | weights), s.sent_names
