"""Codec benchmark on real activations: does byte-shuffle before zstd pay off?

Three sources of float32 activations, split into post-ReLU and pre-activation tensors:
- the demo CNN (onnx.helper, random weights) run by onnxruntime on random images;
- a small plain-torch conv/bn/relu net fed a smooth synthetic image (batch-norm
  statistics taken from that image, so activations are normalised as in a trained net);
- two torch TransformerEncoderLayers: embeddings of a repetitive token sequence plus
  sinusoidal positions, and the hidden state after each layer;
- the bench models of ``splitpoint bench`` (ResNet-18, MobileNetV2, BERT-mini-sized
  encoder; random weights), when ``benchmarks/bench_models.py`` has built them.

For every spec it reports the compression ratio (logical bytes / encoded bytes) and
encode and decode throughput in logical MB/s, each the median over interleaved runs
(every spec runs once per round, so drifts of clock and cache hit all specs alike).

    python benchmarks/codec_bench.py [--repeat 7] [--specs raw,zstd:3,...] [--bench-models build/bench-models]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from splitpoint import codec

SPECS = [
    "raw",
    "zstd:1",
    "shuffle-zstd:1",
    "zstd:3",
    "shuffle-zstd:3",
    "zstd:9",
    "shuffle-zstd:9",
    "fp16",
    "fp16+zstd:3",
    "fp16+shuffle-zstd:3",
    "int8",
    "int8+zstd:3",
    "int8-channel+zstd:3",
]

Activations = list[tuple[str, str, np.ndarray]]  # (group, tensor name, array)


def demo_cnn_activations(batch: int = 4, size: int = 64) -> Activations:
    """The demo CNN's intermediate tensors, exposed as extra graph outputs.

    Non-negative ones (ReLU outputs and the max-pool of one) count as post-ReLU.
    """
    import onnx
    import onnxruntime as ort

    from testbed.models import demo_cnn

    model = demo_cnn(size=size)
    wanted = [out for node in model.graph.node for out in node.output if out != "logits"]
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in wanted)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).random((batch, 3, size, size), np.float32)
    values = session.run(wanted, {"image": image})
    return [
        ("demo-cnn post-relu" if value.min() >= 0 else "demo-cnn pre-act", name, value)
        for name, value in zip(wanted, values)
        if value.nbytes >= 1 << 16  # the conv trunk; the pooled head is a few hundred bytes
    ]


def smooth_image(size: int = 128) -> np.ndarray:
    """A smooth, photo-like image: gradients, low-frequency waves and soft blobs per channel."""
    y, x = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(1)
    channels = []
    for c in range(3):
        img = 0.4 * x + 0.3 * y * (c - 1) + 0.2 * np.sin(2 * np.pi * (2 + c) * x) * np.cos(2 * np.pi * 3 * y)
        for cx, cy, r in rng.random((5, 3)):
            img += 0.5 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (0.02 + 0.05 * r))
        channels.append(img)
    image = np.stack(channels)
    return ((image - image.mean()) / image.std()).astype(np.float32)[None]


def torch_cnn_activations(size: int = 128) -> Activations:
    """Conv outputs, batch-norm outputs (pre-activation) and ReLU outputs of a small torch CNN."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    widths = [(3, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2)]
    layers = [(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout, momentum=None)) for cin, cout, stride in widths]
    image = torch.from_numpy(smooth_image(size))

    def forward(record: Callable[[str, str, torch.Tensor], None]) -> None:
        x = image
        for i, (conv, bn) in enumerate(layers):
            x = conv(x)
            record("torch-cnn pre-act", f"conv{i}", x)
            x = bn(x)
            record("torch-cnn pre-act", f"bn{i}", x)
            x = torch.relu(x)
            record("torch-cnn post-relu", f"relu{i}", x)

    with torch.no_grad():
        for _, bn in layers:
            bn.train()
        forward(lambda *_: None)  # batch-norm running statistics from the image itself
        for _, bn in layers:
            bn.eval()
        out: Activations = []
        forward(lambda group, name, t: out.append((group, name, t.numpy().copy())))
    return out


def transformer_activations(seq: int = 256, width: int = 256, depth: int = 2) -> Activations:
    """Hidden states of a small encoder stack on embeddings of a repetitive token sequence."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    vocab = nn.Embedding(1000, width)
    tokens = torch.tensor(np.random.default_rng(2).integers(0, 200, 32)).repeat(seq // 32 + 1)[:seq]
    position = torch.arange(seq)[:, None] / torch.pow(10000, torch.arange(0, width, 2) / width)
    pos = torch.zeros(seq, width)
    pos[:, 0::2], pos[:, 1::2] = torch.sin(position), torch.cos(position)
    encoder = [nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True) for _ in range(depth)]
    with torch.no_grad():
        x = (vocab(tokens) + pos)[None]
        out: Activations = [("transformer hidden", "embed", x.numpy().copy())]
        for i, layer in enumerate(encoder):
            x = layer.eval()(x)
            out.append(("transformer hidden", f"layer{i}", x.numpy().copy()))
    return out


def bench_model_activations(directory: Path, per_model: int = 6) -> Activations:
    """Activations of the bench models (``benchmarks/bench_models.py`` writes them to ``directory``).

    Post-activation tensors of the CNNs (ReLU / ReLU6 outputs) on a smooth 224x224
    image, and the encoder's hidden states (LayerNormalization outputs) on its bundle's
    golden token ids; ``per_model`` of each, spread evenly from input to output.
    """
    import onnx
    import onnxruntime as ort

    from splitpoint.bundle import Bundle

    out: Activations = []
    for model_name, kinds in (("resnet18", {"Relu"}), ("mobilenetv2", {"Clip", "Relu"}), ("bert-mini", {"LayerNormalization"})):
        path = directory / f"{model_name}.onnx"
        if not path.exists():
            continue
        model = onnx.load(path)
        candidates = [n.output[0] for n in model.graph.node if n.op_type in kinds]
        spread = np.linspace(0, len(candidates) - 1, min(per_model, len(candidates))).round().astype(int)
        picked = list(dict.fromkeys(candidates[i] for i in spread))
        model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in picked)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        if model_name == "bert-mini":
            feeds = Bundle(directory / model_name).golden_cases()[0][0]
            group = "bert-mini hidden"
        else:
            feeds = {session.get_inputs()[0].name: smooth_image(224)}
            group = f"{model_name} post-relu"
        out += [(group, f"{model_name}:{n}", v) for n, v in zip(picked, session.run(picked, feeds))]
    return out


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(activations: Activations, specs: list[str], repeat: int) -> dict[tuple[str, str], dict]:
    """Per (tensor, spec): encoded size and encode/decode seconds of each interleaved round."""
    results: dict[tuple[str, str], dict] = {}
    for _, name, array in activations:
        for spec in specs:
            enc = codec.encode(array, spec, name=name)
            back = codec.decode(enc.data, enc.params, dtype=array.dtype, shape=array.shape, name=name)
            if codec.parse(spec).lossless:
                assert back.tobytes() == array.tobytes(), f"{spec} did not round-trip {name}"
            results[name, spec] = {"encoded": enc, "bytes": len(enc.data), "enc": [], "dec": []}
    for _ in range(repeat):
        for _, name, array in activations:
            for spec in specs:
                r = results[name, spec]
                enc = r["encoded"]
                r["enc"].append(timed(lambda: codec.encode(array, spec, name=name)))
                r["dec"].append(
                    timed(lambda: codec.decode(enc.data, enc.params, dtype=array.dtype, shape=array.shape, name=name))
                )
    return results


def machine() -> str:
    import onnxruntime
    import torch
    import zstandard

    zstd = ".".join(map(str, zstandard.ZSTD_VERSION))
    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"(1-min load average {os.getloadavg()[0]:.2f}); "
        f"Python {platform.python_version()}, numpy {np.__version__}, zstandard {zstandard.__version__} "
        f"(libzstd {zstd}), torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    )


def report(activations: Activations, specs: list[str], results: dict, repeat: int) -> str:
    lines = [f"Machine: {machine()}", f"Median of {repeat} interleaved runs; MB/s of logical (float32) bytes.", ""]
    groups = list(dict.fromkeys(group for group, _, _ in activations))
    for group in groups:
        members = [(name, a) for g, name, a in activations if g == group]
        logical = sum(a.nbytes for _, a in members)
        shapes = ", ".join(f"{name} {list(a.shape)}" for name, a in members)
        lines += [f"### {group}: {len(members)} tensors, {logical / 1e6:.1f} MB", "", f"Tensors: {shapes}", ""]
        lines += ["| spec | ratio | encode MB/s | decode MB/s |", "|---|---:|---:|---:|"]
        for spec in specs:
            encoded = sum(results[name, spec]["bytes"] for name, _ in members)
            enc = sum(statistics.median(results[name, spec]["enc"]) for name, _ in members)
            dec = sum(statistics.median(results[name, spec]["dec"]) for name, _ in members)
            ratio, enc_speed, dec_speed = logical / encoded, logical / enc / 1e6, logical / dec / 1e6
            lines.append(f"| {spec} | {ratio:.2f} | {enc_speed:.0f} | {dec_speed:.0f} |")
        lines.append("")
    lossless = [s for s in specs if codec.parse(s).lossless and s != "raw"]
    lines += ["### Lossless ratio per tensor", "", "| group | tensor | zeros | " + " | ".join(lossless) + " |"]
    lines.append("|---|---|---:|" + "---:|" * len(lossless))
    for group, name, array in activations:
        ratios = " | ".join(f"{array.nbytes / results[name, s]['bytes']:.2f}" for s in lossless)
        lines.append(f"| {group} | {name} | {np.mean(array == 0):.0%} | {ratios} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="interleaved timing rounds (default 7)")
    parser.add_argument("--specs", default=",".join(SPECS), help="comma-separated codec specs")
    parser.add_argument("--bench-models", type=Path, default=Path("build/bench-models"),
                        help="where benchmarks/bench_models.py wrote the bench models (skipped when absent)")
    args = parser.parse_args()
    specs = [codec.parse(s).spec for s in args.specs.split(",")]
    activations = demo_cnn_activations() + torch_cnn_activations() + transformer_activations()
    activations += bench_model_activations(args.bench_models)
    print(report(activations, specs, measure(activations, specs, args.repeat), args.repeat))


if __name__ == "__main__":
    main()
