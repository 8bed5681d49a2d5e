"""The torch backend: TorchScript files and torch.export programs with splitpoint specs, run like the other sessions."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from splitpoint.backends import load_session, save_exported, save_torchscript  # noqa: E402
from splitpoint.bundle import TensorSpec  # noqa: E402
from splitpoint.compare import difference  # noqa: E402
from splitpoint.errors import SplitpointError  # noqa: E402


class TwoOutputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, image: torch.Tensor, scale: torch.Tensor):
        y = torch.relu(self.conv(image)) * scale
        return y, y.mean(dim=(2, 3))


SPECS_IN = [TensorSpec("image", "float32", ("N", 3, 8, 8)), TensorSpec("scale", "float32", (1,))]
SPECS_OUT = [TensorSpec("features", "float32", ("N", 4, 8, 8)), TensorSpec("pooled", "float32", ("N", 4))]


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    module = TwoOutputs().eval()
    path = tmp_path_factory.mktemp("torch") / "two.pt"
    example = (torch.randn(1, 3, 8, 8), torch.ones(1))
    save_torchscript(torch.jit.trace(module, example), path, SPECS_IN, SPECS_OUT)
    return module, path


def test_torchscript_file_runs_with_names_from_its_specs(scripted):
    module, path = scripted
    session = load_session(path)
    assert session.backend == "torch" and session.inputs == SPECS_IN and session.outputs == SPECS_OUT
    x = {"image": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32),
         "scale": np.array([2.0], np.float32)}
    got = session.run(x)
    with torch.no_grad():
        want = module(torch.from_numpy(x["image"]), torch.from_numpy(x["scale"]))
    assert difference({"features": want[0].numpy(), "pooled": want[1].numpy()}, got).ok
    assert got["pooled"].shape == (2, 4)  # traced at batch 1, runs at batch 2


def test_torch_and_onnxruntime_agree_on_one_module(scripted, tmp_path):
    module, path = scripted
    onnx_path = tmp_path / "two.onnx"
    torch.onnx.export(module, (torch.randn(1, 3, 8, 8), torch.ones(1)), str(onnx_path),
                      input_names=["image", "scale"], output_names=["features", "pooled"], dynamo=False)
    x = {"image": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32),
         "scale": np.array([0.5], np.float32)}
    assert difference(load_session(onnx_path).run(x), load_session(path).run(x)).ok


def test_missing_input_and_bad_files_are_one_clear_error(scripted, tmp_path):
    _, path = scripted
    with pytest.raises(SplitpointError, match=r"missing input tensor\(s\) \['scale'\]"):
        load_session(path).run({"image": np.zeros((1, 3, 8, 8), np.float32)})
    bare = tmp_path / "bare.pt"
    torch.jit.save(torch.jit.script(torch.nn.ReLU()), str(bare))
    with pytest.raises(SplitpointError, match="bare.pt: no tensor specs in the archive; save it with"):
        load_session(bare)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip archive")
    with pytest.raises(SplitpointError, match="junk.pt: torch cannot load it as TorchScript"):
        load_session(junk)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A torch.export program with a dynamic batch, as PyTorch segments are saved."""
    module = TwoOutputs().eval()
    path = tmp_path_factory.mktemp("torch") / "two.pt2"
    program = torch.export.export(module, (torch.randn(2, 3, 8, 8), torch.ones(1)),
                                  dynamic_shapes=({0: torch.export.Dim.AUTO}, None))
    save_exported(program, path, SPECS_IN, SPECS_OUT)
    return module, program, path


@pytest.mark.parametrize("batch", [1, 3])
def test_exported_program_runs_at_any_batch_with_names_from_its_specs(exported, batch):
    module, _, path = exported
    session = load_session(path)
    assert session.backend == "torch" and session.inputs == SPECS_IN and session.outputs == SPECS_OUT
    x = {"image": np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32),
         "scale": np.array([1.5], np.float32)}
    with torch.no_grad():
        want = module(torch.from_numpy(x["image"]), torch.from_numpy(x["scale"]))
    got = session.run(x)
    assert got["pooled"].shape == (batch, 4)
    assert difference({"features": want[0].numpy(), "pooled": want[1].numpy()}, got).ok


def test_exported_program_errors_name_the_file_and_the_fix(exported, tmp_path):
    _, program, path = exported
    with pytest.raises(SplitpointError, match=r"two.pt2: torch failed: .*size"):  # the program's shape guard
        load_session(path).run({"image": np.zeros((1, 3, 9, 8), np.float32), "scale": np.ones(1, np.float32)})
    bare = tmp_path / "bare.pt2"
    torch.export.save(program, str(bare))
    with pytest.raises(SplitpointError, match=r"bare.pt2: no tensor specs in the archive; save it with "
                                              r"splitpoint.backends.save_exported"):
        load_session(bare)
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a zip archive")
    with pytest.raises(SplitpointError, match="junk.pt2: torch cannot load it as a torch.export program"):
        load_session(junk)
