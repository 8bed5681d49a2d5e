"""PyTorch modules in: ``from_torch`` with both exporters, names by module path, and ``FILE.py:FACTORY`` on the CLI."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from partitioner import PartitionError, from_torch, split
from partitioner.verify import edge_then_cloud
from splitpoint.backends import load_session
from splitpoint.bundle import Bundle
from splitpoint.cli import main
from splitpoint.compare import array_difference

torch = pytest.importorskip("torch")
zoo = pytest.importorskip("testbed.zoo")

pytestmark = pytest.mark.slow

# the output of the first residual stage (a single-tensor cut), as each exporter names it
STAGE1 = {False: "/layer1/layer1.1/relu_1/Relu_output_0", True: "/layer1.1.relu/Relu_1_output_0"}

MODULE_FILE = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, image):
        return self.head(self.stem(image).mean((2, 3)))


def make():
    torch.manual_seed(0)
    return Tiny()


def not_a_module():
    return 3


def untraceable():
    class Numpy(nn.Module):
        def forward(self, x):
            return x.numpy()

    return Numpy()
'''


@pytest.fixture(scope="module")
def net():
    return zoo.resnet_like()


@pytest.fixture(scope="module", params=[False, True], ids=["legacy", "dynamo"])
def exported(request: pytest.FixtureRequest, net, tmp_path_factory: pytest.TempPathFactory) -> tuple[bool, Path]:
    path = from_torch(net, torch.randn(1, 3, 64, 64), dynamo=request.param,
                      path=tmp_path_factory.mktemp("torch") / "resnet.onnx")
    return request.param, path


def test_from_torch_names_tensors_by_module_path_and_splits_there(exported, net, tmp_path: Path) -> None:
    dynamo, path = exported
    model = onnx.load(path)
    assert [i.name for i in model.graph.input] == ["x"] and [o.name for o in model.graph.output] == ["output"]
    assert not path.with_name(path.name + ".data").exists()  # weights embedded, either exporter
    internal = [o for n in model.graph.node for o in n.output if o != "output"]
    assert all(o.startswith("/") and o.endswith(("_output_0", "_output_1")) for o in internal), internal[:5]
    assert STAGE1[dynamo] in internal

    bundle = split(path, tmp_path / "b", at=STAGE1[dynamo])
    s = bundle.manifest.splits[0]
    assert s.sent_names == [STAGE1[dynamo]] and s.verification["ratio"] <= 1
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32)  # batch 2: the batch is dynamic
    got = edge_then_cloud(load_session(bundle.path(s.edge_file)), load_session(bundle.path(s.cloud_file)), {"x": x})
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert array_difference(want, got["output"]).ok


def test_from_torch_refuses_what_is_not_a_module_or_a_tensor(tmp_path: Path) -> None:
    with pytest.raises(PartitionError, match="from_torch needs a torch.nn.Module, got function"):
        from_torch(zoo.resnet_like, torch.randn(1, 3, 64, 64))
    with pytest.raises(PartitionError, match="example_inputs must be a tensor or a sequence of tensors"):
        from_torch(zoo.resnet_like(), [np.zeros((1, 3, 64, 64), np.float32)])
    with pytest.raises(PartitionError, match=r"the module fails on the example inputs \(x float32\[1, 4, 64, 64\]\): "
                                             r"RuntimeError: "):
        from_torch(zoo.resnet_like(), torch.randn(1, 4, 64, 64), path=tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_without_torch_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails, as where it is not installed
    with pytest.raises(PartitionError, match=re.escape("PyTorch is not installed; to export a module to ONNX: "
                                                       "pip install 'splitpoint[torch]'")):
        from_torch(object(), ())
    (tmp_path / "m.py").write_text(MODULE_FILE)
    assert main(["inspect", f"{tmp_path / 'm.py'}:make", "--example-shape", "1,3,16,16"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: PyTorch is not installed; to export {tmp_path / 'm.py'}:make: pip install 'splitpoint[torch]'")


def test_the_cli_exports_a_factory_in_a_subprocess_and_splits_it(tmp_path: Path, capsys) -> None:
    (tmp_path / "tiny.py").write_text(MODULE_FILE)
    out = tmp_path / "bundle"
    assert main(["split", f"{tmp_path / 'tiny.py'}:make", "--example-shape", "1,3,16,16", "-o", str(out),
                 "--at", "/stem/stem.1/Relu_output_0"]) == 0
    printed = capsys.readouterr().out
    assert "with the legacy exporter, in a subprocess" in printed
    bundle = Bundle(out)
    assert bundle.manifest.name == "make" and bundle.manifest.inputs[0].name == "image"
    s = bundle.manifest.splits[0]
    assert s.sent_names == ["/stem/stem.1/Relu_output_0"] and s.verification["ratio"] <= 1
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    got = edge_then_cloud(load_session(bundle.path(s.edge_file)), load_session(bundle.path(s.cloud_file)), {"image": x})
    with torch.no_grad():
        sys.path.insert(0, str(tmp_path))
        try:
            import tiny  # the same seeded weights the factory made in the subprocess
        finally:
            sys.path.remove(str(tmp_path))
        want = tiny.make()(torch.from_numpy(x)).numpy()
    assert array_difference(want, got["output"]).ok


@pytest.mark.parametrize(
    ("model", "args", "message"),
    [
        ("absent.py:make", ["--example-shape", "1,3,16,16"], "{dir}/absent.py: no such file"),
        ("m.py:make", [], "{dir}/m.py:make: give the shape of each forward input with --example-shape, e.g. 1,3,224,224"),
        ("m.py:mak", ["--example-shape", "1,3,16,16"], "{dir}/m.py has no factory 'mak'; did you mean make?"),
        ("m.py:not_a_module", ["--example-shape", "1,3,16,16"],
         "{dir}/m.py:not_a_module() returned int, not a torch.nn.Module"),
        ("m.py:untraceable", ["--example-shape", "1,3,16,16"], "torch.onnx.export failed: ..."),  # then torch's words
    ],
    ids=["no-file", "no-shape", "no-factory", "not-a-module", "export-fails"],
)
def test_cli_errors_for_factories_are_one_line(tmp_path: Path, capsys, model: str, args: list[str], message: str) -> None:
    (tmp_path / "m.py").write_text(MODULE_FILE)
    assert main(["inspect", f"{tmp_path}/{model}", *args]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    expected = "error: " + message.format(dir=tmp_path)
    assert last.startswith(expected.removesuffix("...")) if expected.endswith("...") else last == expected, last
