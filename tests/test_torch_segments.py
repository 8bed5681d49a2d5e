"""PyTorch segments: splits cut from a torch module's own graph, checked against the ONNX split, run by the edge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
zoo = pytest.importorskip("testbed.zoo")

from edge import EdgeRuntime  # noqa: E402
from partitioner import PartitionError, split, split_torch  # noqa: E402
from partitioner.torch_segments import export_program, write_torch_segments  # noqa: E402
from splitpoint.backends import load_session  # noqa: E402
from splitpoint.bundle import Bundle  # noqa: E402
from splitpoint.cli import main  # noqa: E402
from splitpoint.compare import difference  # noqa: E402
from splitpoint.errors import BundleError, SplitpointError  # noqa: E402

pytestmark = pytest.mark.slow

# Legacy-exporter names. The last cut's names say Conv, but the exporter folded each batch norm into its
# convolution: the values are the batch norms' outputs, which is what the FX graph must be cut at.
RESNET_CUTS = [
    ["/layer2/layer2.0/relu_1/Relu_output_0"],
    ["/layer1/layer1.1/relu/Relu_output_0", "/layer1/layer1.0/relu_1/Relu_output_0"],
    ["/layer3/layer3.0/conv2/Conv_output_0", "/layer3/layer3.0/downsample/downsample.0/Conv_output_0"],
]


@pytest.fixture(scope="module")
def resnet():
    return zoo.resnet_like()


@pytest.fixture(scope="module")
def resnet_bundle(resnet, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("torchseg") / "resnet"
    split_torch(resnet, torch.randn(1, 3, 64, 64), out, at=RESNET_CUTS)
    return out


@pytest.fixture(scope="module")
def transformer():
    return zoo.transformer_encoder_like()


@pytest.fixture(scope="module")
def transformer_bundle(transformer, tmp_path_factory) -> Path:
    """Dynamo-exported (names by module path); the automatic cut sends the attention mask's derived tensors too."""
    out = tmp_path_factory.mktemp("torchseg") / "transformer"
    ids, mask = torch.randint(0, 1000, (1, 64)), torch.ones(1, 64, dtype=torch.int64)
    split_torch(transformer, (ids, mask), out, at="auto", dynamo=True)
    return out


def _eager(module, *arrays: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(*(torch.from_numpy(a) for a in arrays)).numpy()


def _tokens(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, 64), np.int64)
    mask[0, 40:] = 0  # padding: masked keys must not count
    return {"input_ids": rng.integers(0, 1000, (batch, 64)), "attention_mask": mask}


def _cut_splits(bundle: Path) -> list:
    return [s for s in Bundle(bundle).manifest.splits if s.edge_file]


def test_every_split_gets_pytorch_segments_that_match_the_onnx_ones(resnet_bundle: Path) -> None:
    bundle = Bundle(resnet_bundle)
    m = bundle.manifest
    splits = _cut_splits(resnet_bundle)
    assert len(splits) == len(RESNET_CUTS)
    assert m.torch_model_file == "model.pt2" and m.split("cloud").torch_cloud_file == "model.pt2"
    assert m.split("local").torch_edge_file is None
    x = {"x": np.random.default_rng(7).standard_normal((3, 3, 64, 64)).astype(np.float32)}  # not the golden batch
    for s in splits:
        assert s.torch_edge_file == f"edge/{s.id}.pt2" and s.torch_cloud_file == f"cloud/{s.id}.pt2"
        assert s.verification["torch"]["ratio"] <= 1
        onnx_edge, torch_edge = load_session(bundle.path(s.edge_file)), load_session(bundle.path(s.torch_edge_file))
        onnx_cloud, torch_cloud = load_session(bundle.path(s.cloud_file)), load_session(bundle.path(s.torch_cloud_file))
        assert torch_edge.backend == "torch" and torch_edge.outputs == onnx_edge.outputs
        assert torch_cloud.inputs == onnx_cloud.inputs
        sent = onnx_edge.run(x)
        assert difference(sent, torch_edge.run(x)).ok  # the sent tensors themselves, at batch 3
        assert difference(onnx_cloud.run(sent), torch_cloud.run(sent)).ok


def test_torch_prefix_with_onnx_worker_and_torch_fallback_equal_the_local_model(
    resnet_bundle: Path, resnet, worker_factory
) -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    want = {"output": _eager(resnet, x)}
    worker = worker_factory(resnet_bundle)
    for s in _cut_splits(resnet_bundle):
        with EdgeRuntime(resnet_bundle, cloud=worker.address, split=s.id, backend="torch", deadline_ms=5000) as rt:
            assert rt._segments[s.id].prefix.backend == "torch" and rt._segments[s.id].suffix.backend == "torch"
            assert difference(want, rt.infer({"x": x})).ok
            assert rt.last_trace.path == "cloud"
    worker.kill()
    s = _cut_splits(resnet_bundle)[0]
    with EdgeRuntime(resnet_bundle, cloud=worker.address, split=s.id, backend="torch", deadline_ms=500) as rt:
        assert difference(want, rt.infer({"x": x})).ok  # the PyTorch suffix finished it here
        assert rt.last_trace.path == "fallback"


def test_transformer_with_attention_mask_splits_on_pytorch(transformer_bundle: Path, transformer, worker_factory) -> None:
    s = _cut_splits(transformer_bundle)[0]
    sent = set(s.sent_names)
    assert len(sent) > 1 and s.verification["torch"]["ratio"] <= 1
    feeds = _tokens(2, seed=3)
    want = {"output": _eager(transformer, feeds["input_ids"], feeds["attention_mask"])}
    worker = worker_factory(transformer_bundle)
    with EdgeRuntime(transformer_bundle, cloud=worker.address, split=s.id, backend="torch", deadline_ms=5000) as rt:
        assert difference(want, rt.infer(feeds)).ok
        assert rt.last_trace.path == "cloud"
    with EdgeRuntime(transformer_bundle, split="local", backend="torch") as rt:  # the full model as a PyTorch program
        assert difference(want, rt.infer(feeds)).ok


@pytest.mark.parametrize("moved", [0.01, 0.25])
def test_a_program_with_one_weight_changed_is_refused_by_the_rule(transformer, tmp_path: Path, moved: float) -> None:
    """The tolerance lets two correct runtimes round differently, not a wrong program through: one weight of the
    first attention projection moved by 1 % (or a quarter) of that layer's largest weight fails the check, naming
    the rule."""
    import copy

    from partitioner.pytorch import from_torch

    example = (torch.randint(0, 1000, (1, 64)), torch.ones(1, 64, dtype=torch.int64))
    model = from_torch(transformer, example, dynamo=True, path=tmp_path / "encoder.onnx")
    wrong = copy.deepcopy(transformer)
    with torch.no_grad():
        weight = wrong.layers[0].proj.weight
        weight[0, 0] += moved * weight.abs().max()
    program = export_program(wrong, example)
    with pytest.raises(PartitionError, match=r"model\.pt2 does not reproduce 'output' .*x the tolerance 6\.2e-05: "
                                             r"beyond the rule \|actual - reference\| <= "):
        split(model, tmp_path / "b", at="auto", finish=lambda root: write_torch_segments(root, program, print))


def test_dynamo_node_names_map_to_the_fx_graph(resnet, tmp_path: Path) -> None:
    """A dynamo export keeps FX node names (``relu_8``); a bundle from it gets PyTorch segments too."""
    exported = zoo.export_onnx(resnet, tmp_path / "resnet.onnx", dynamo=True)
    program = export_program(resnet, torch.randn(1, 3, 64, 64))
    bundle = split(exported, tmp_path / "b", at="relu_8", finish=lambda root: write_torch_segments(root, program, print))
    s = bundle.manifest.splits[0]
    assert s.sent_names == ["relu_8"] and s.verification["torch"]["ratio"] <= 1
    x = {"x": np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    got = load_session(bundle.path(s.torch_edge_file)).run(x)["relu_8"]
    with torch.no_grad():  # relu_8 is layer2's output
        stem = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(torch.from_numpy(x["x"])))))
        assert difference({"relu_8": resnet.layer2(resnet.layer1(stem)).numpy()}, {"relu_8": got}).ok


class SiluNet(torch.nn.Module):
    """The legacy exporter writes SiLU as Sigmoid then Mul; the FX graph has one silu node, no sigmoid tensor."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.act = torch.nn.SiLU()
        self.conv2 = torch.nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))


def test_a_cut_the_fx_graph_cannot_express_names_the_tensor_and_nearby_ones(tmp_path: Path) -> None:
    out = tmp_path / "b"
    with pytest.raises(PartitionError) as e:
        split_torch(SiluNet(), torch.randn(1, 3, 16, 16), out, at="/act/Sigmoid_output_0,/conv1/Conv_output_0")
    message = str(e.value)
    assert "the PyTorch graph cannot cut at '/act/Sigmoid_output_0': none of its nodes computes that tensor" in message
    assert "'/act/Mul_output_0'" in message.split("tensors near it that it has:")[1]
    assert "--no-torch-segments" in message
    assert not out.exists()  # nothing written
    bundle = split_torch(SiluNet(), torch.randn(1, 3, 16, 16), out, at="/act/Sigmoid_output_0,/conv1/Conv_output_0",
                         torch_segments=False)
    assert bundle.manifest.torch_model_file is None and bundle.manifest.splits[0].torch_edge_file is None


def test_backend_torch_needs_pytorch_segments_and_a_known_backend(demo_bundle: Path) -> None:
    with pytest.raises(BundleError, match=r"holds no PyTorch segments; make the bundle from a torch module"):
        EdgeRuntime(demo_bundle, split="local", backend="torch")
    with pytest.raises(SplitpointError, match=r"backend 'tensorflow': use None .* or 'torch'"):
        EdgeRuntime(demo_bundle, split="local", backend="tensorflow")


def test_cli_split_of_a_factory_writes_pytorch_segments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "net.py").write_text(
        "import torch\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),\n"
        "                               torch.nn.Conv2d(8, 4, 3, padding=1))\n"
    )
    model = f"{tmp_path / 'net.py'}:make"
    common = [model, "--example-shape", "1,3,16,16", "--at", "/2/Relu_output_0"]
    assert main(["split", *common, "-o", str(tmp_path / "b")]) == 0
    assert "PyTorch segments agree with the ONNX split" in capsys.readouterr().out
    s = Bundle(tmp_path / "b").manifest.splits[0]
    assert s.torch_edge_file and s.verification["torch"]["ratio"] <= 1
    assert main(["split", *common, "-o", str(tmp_path / "onnx_only"), "--no-torch-segments"]) == 0
    assert Bundle(tmp_path / "onnx_only").manifest.splits[0].torch_edge_file is None


def test_a_replaced_pytorch_program_is_refused_at_load(resnet_bundle: Path, tmp_path: Path) -> None:
    """The torch backend's local fallback must be the model the worker's segments were cut from, as with ONNX."""
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(resnet_bundle, bundle)
    m = Bundle(bundle).manifest
    assert m.torch_model_sha256 is not None
    with EdgeRuntime(bundle, split="local", backend="torch"):
        pass
    program = bundle / m.torch_model_file
    program.write_bytes(program.read_bytes() + b"\0")  # replaced or damaged
    with pytest.raises(BundleError, match=rf"{m.torch_model_file} has sha256 .* the model file was replaced or damaged"):
        EdgeRuntime(bundle, split="local", backend="torch")
    with EdgeRuntime(bundle, split="local"):  # the ONNX model is untouched and still loads
        pass
