"""The models `splitpoint bench` is run on, as `--candidates auto` bundles priced for a slow edge.

ResNet-18 and MobileNetV2 (the real architectures, 224x224 input, 1000 classes) and a
small BERT-like encoder (BERT-mini sized: 4 layers, 256 wide, 4 heads, feed-forward
1024, 30522-token vocabulary, 128 tokens), written in plain torch in testbed/zoo.py
(torchvision does not import here). Weights are random and seeded: the timings do
not depend on them, but the bytes a codec saves do (post-ReLU zeros are real,
learned sparsity is not).

Each model is exported to ONNX (the legacy exporter: tensors named by module path),
profiled as the cloud (``--worker-threads``, unrestricted: run `splitpoint bench`
with the same ``--worker-threads``) and as the edge (1 thread inside
`testbed.device.CpuLimit(--edge-cpu)`, the same emulation `splitpoint bench` uses),
and split at the cuts in ``CUTS`` and with `--candidates auto` from those two
profiles, so the bundle's predicted costs describe the slow edge and the worker
the bench measures.

    .venv/bin/python benchmarks/bench_models.py [--out build/bench-models] [--edge-cpu 0.25] [--worker-threads 1] \
        [--models resnet18,...]

writes OUT/<model>.onnx, OUT/<model>.edge.json, OUT/<model>.cloud.json and the bundle OUT/<model>/.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from pathlib import Path

from partitioner import profile, split
from testbed.device import CpuLimit

IMAGE = {"x": [1, 3, 224, 224]}
TOKENS = {"input_ids": [1, 128], "attention_mask": [1, 128]}
SHAPES = {"resnet18": IMAGE, "mobilenetv2": IMAGE, "bert-mini": TOKENS}
# Cuts every bundle holds besides the `--candidates auto` ones, which depend on the profiles (and so on how
# busy the shared machine was while profiling): the ends of ResNet's layer2 and layer3, of MobileNetV2's
# 32- and 64-channel stages, and the encoder's hidden state after two of its four layers.
CUTS = {
    "resnet18": [["/layer2/layer2.1/relu_1/Relu_output_0"], ["/layer3/layer3.1/relu_1/Relu_output_0"]],
    "mobilenetv2": [["/features/features.8/Add_output_0"], ["/features/features.12/Add_output_0"]],
    # the attention bias and the pooling weights, both from the mask, cross with the hidden state
    "bert-mini": [["/layers.1/norm2/LayerNormalization_output_0", "/Mul_output_0", "/Cast_1_output_0"]],
}


def export(name: str, path: Path) -> None:
    """Build and export one model (in a child process: torch stays out of the process that profiles)."""
    import torch

    from testbed import zoo

    if name == "resnet18":
        zoo.export_onnx(zoo.resnet_like(width=64, num_classes=1000), path, dynamo=False, input_shape=(1, 3, 224, 224))
    elif name == "mobilenetv2":
        zoo.export_onnx(zoo.mobilenet_v2_like(full_size=True), path, dynamo=False, input_shape=(1, 3, 224, 224))
    else:
        torch.manual_seed(0)
        bert = zoo.TransformerEncoderLike(vocab=30522, dim=256, heads=4, hidden=1024, layers=4, max_len=128,
                                          num_classes=2).eval()
        zoo.export_transformer_onnx(bert, path, dynamo=False, seq_len=128)


def build(name: str, out: Path, edge_cpu: float, worker_threads: int, runs: int) -> Path:
    log = lambda m: print(f"[{name}] {m}", file=sys.stderr, flush=True)
    model = out / f"{name}.onnx"
    log(f"exporting {model}")
    child = multiprocessing.get_context("spawn").Process(target=export, args=(name, model))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"exporting {name} failed (exit {child.exitcode})")
    shapes = SHAPES[name]
    log(f"profiling the cloud: {worker_threads} thread(s)")
    profile(model, threads=worker_threads, runs=runs, shapes=shapes, log=log).save(out / f"{name}.cloud.json")
    with CpuLimit(edge_cpu) as limit:
        log(f"profiling the edge: 1 thread, {limit.method}")
        profile(model, threads=1, runs=runs, shapes=shapes, log=log).save(out / f"{name}.edge.json")
    bundle = split(model, out / name, at=CUTS[name], candidates="auto", shapes=shapes, overwrite=True, log=log,
                   edge_profile=out / f"{name}.edge.json", cloud_profile=out / f"{name}.cloud.json")
    log(f"bundle {bundle.root}: splits {', '.join(s.id for s in bundle.manifest.splits)}")
    return bundle.root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("build/bench-models"), help="where to write (default: build/bench-models)")
    ap.add_argument("--edge-cpu", type=float, default=0.25, help="the edge's CPU quota in cores (default: 0.25)")
    ap.add_argument("--worker-threads", type=int, default=1,
                    help="the worker's onnxruntime threads, for the cloud profile (default: 1; on a 2-vCPU machine shared "
                    "with the edge, 2 threads are no faster and suffer when another process holds a core)")
    ap.add_argument("--runs", type=int, default=20, help="timed profile runs per side (default: 20)")
    ap.add_argument("--models", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)} (default: all)")
    args = ap.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        ap.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        print(build(name, args.out, args.edge_cpu, args.worker_threads, args.runs))


if __name__ == "__main__":
    main()
