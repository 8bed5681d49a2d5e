"""PyTorch profiles: torch.profiler per module call, mapped onto the nodes of the module's ONNX export."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from partitioner import PartitionError, Profile, profile
from partitioner.profile_torch import scope_of
from splitpoint.cli import main

MODULES = {"", "stem", "blocks", "blocks.0", "blocks.0.conv1", "blocks.0.bn1", "blocks.0.relu", "blocks.0.conv2", "head"}
SOURCE = '''
    import torch
    from torch import nn


    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
            self.relu, self.conv2 = nn.ReLU(), nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return self.relu(self.conv2(self.relu(self.bn1(self.conv1(x)))) + x)


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.blocks = nn.Sequential(Block(16), Block(16))
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            x = self.blocks(torch.relu(self.stem(x)))
            return self.head(x.mean(dim=(2, 3)))


    def net():
        torch.manual_seed(0)
        return Net().eval()


    def broken():
        class Bad(nn.Module):
            def forward(self, x):
                if x.sum() > -1e9 and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
                    raise RuntimeError("only fails when run")
                return x + 1
        return Bad()
'''


@pytest.fixture(scope="module")
def factory(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("torch") / "models.py"
    path.write_text(textwrap.dedent(SOURCE))
    return f"{path}:net"


@pytest.mark.parametrize(("name", "scope"), [
    ("/blocks/blocks.0/conv1/Conv", "blocks.0.conv1"),  # legacy: one level per module
    ("/blocks/blocks.0/relu_1/Relu", "blocks.0.relu"),  # legacy: the second call of a module
    ("/blocks/blocks.0/Add", "blocks.0"),
    ("/blocks.0.bn1/Conv", "blocks.0.bn1"),  # dynamo, renamed by module path
    ("/blocks.0.relu/Relu_1", "blocks.0.relu"),
    ("/Relu", ""), ("/ReduceMean", ""), ("", ""), ("Conv_3", ""),
])
def test_nodes_belong_to_the_module_they_are_named_after(name: str, scope: str) -> None:
    assert scope_of(name, MODULES) == scope


@pytest.mark.parametrize("dynamo", [False, True])
def test_module_times_land_on_the_export_nodes(factory: str, dynamo: bool) -> None:
    p = profile(factory, backend="torch", threads=1, runs=3, warmup=1, example_shapes=["1,3,32,32"], dynamo=dynamo)
    assert p.backend["name"] == "torch" and p.backend["profiler"] == "torch.profiler"
    assert p.model_file == "net.onnx" and p.shapes == {"x": (1, 3, 32, 32)}
    by_type: dict[str, list] = {}
    for n in p.nodes.values():
        by_type.setdefault(n.op_type, []).append(n)
    assert len(by_type["Conv"]) == 5 and all(n.ms > 0 for n in by_type["Conv"])
    assert all(any(k.startswith("aten::conv2d[") for k in n.kernels) for n in by_type["Conv"])
    folded = [n for n in by_type["Conv"] if any(k.startswith("aten::batch_norm") for k in n.kernels)]
    assert len(folded) == 2  # each block's batch norm, folded into its first conv by the exporter, is charged there
    assert all(any(k.startswith("aten::add[") for k in n.kernels) for n in by_type["Add"])
    assert [n.kernels for n in by_type["ReduceMean"]] == [("aten::mean[1, 16, 32, 32]",)]
    # only the Sequential container's own bookkeeping: small beside the nodes on a fast CPU or a slow one
    assert abs(p.unattributed_ms) < 0.1 * p.node_sum_ms, (p.unattributed_ms, p.node_sum_ms)
    assert p.end_to_end_ms > p.call_overhead_ms > 0 and p.node_sum_ms > 0
    assert p.boundary.cuts == ()


def test_plan_takes_a_torch_profile_of_the_same_export(factory: str, tmp_path: Path, capsys) -> None:
    edge = tmp_path / "edge.json"
    assert main(["profile", factory, "--backend", "torch", "--example-shape", "1,3,32,32", "--threads", "1",
                 "--runs", "2", "--warmup", "1", "-o", str(edge)]) == 0
    assert f"wrote {edge}: torch " in capsys.readouterr().out
    cloud = profile(factory, threads=1, runs=2, warmup=1, example_shapes=["1,3,32,32"])  # onnxruntime, same export
    assert cloud.model_sha256 == Profile.load(edge).model_sha256
    cloud.save(tmp_path / "cloud.json")
    assert main(["plan", factory, "--example-shape", "1,3,32,32", "--edge-profile", str(edge),
                 "--cloud-profile", str(tmp_path / "cloud.json"), "--link", "10mbit/10ms"]) == 0
    assert "edge profile: " + str(edge) + ": torch " in capsys.readouterr().out


def test_a_module_that_fails_in_torch_is_one_line(factory: str) -> None:
    broken = factory.replace(":net", ":broken")
    with pytest.raises(PartitionError) as e:
        profile(broken, backend="torch", threads=1, runs=1, warmup=0, example_shapes=["1,4"])
    assert "RuntimeError: only fails when run" in str(e.value) and "\n" not in str(e.value)


def test_torch_needs_the_module(demo_model: Path) -> None:
    with pytest.raises(PartitionError, match="--backend torch profiles a PyTorch module"):
        profile(demo_model, backend="torch")
