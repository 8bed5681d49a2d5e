"""Small torch models shaped like the classics, and their ONNX export.

torchvision does not import in every environment we run in, so the networks
are written out in plain torch: a ResNet-18-style net (identity and downsample
skips) and a MobileNetV2-style net (inverted residuals). Weights are random
but seeded; only the graph structure matters for splitting.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


class _BasicBlock(nn.Module):
    """Two 3x3 convs plus a skip; the skip is a 1x1 conv when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + skip)


class ResNetLike(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [width, width * 2, width * 4, width * 8]
        layers, cin = [], width
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(_BasicBlock(cin, w, stride), _BasicBlock(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (3x3), project (1x1, linear); residual add when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2Like(nn.Module):
    # (expand, out channels, repeats, first stride): MobileNetV2's table, trimmed and narrowed
    SETTINGS = [(1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 3, 2), (6, 24, 2, 2), (6, 32, 1, 1)]

    def __init__(self, num_classes: int = 10, stem: int = 16, last: int = 128):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6()]
        cin = stem
        for expand, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                blocks.append(_InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        blocks += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def _randomized(module: nn.Module, seed: int) -> nn.Module:
    """Seeded weights and non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.1)
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return module.eval()


def resnet_like(width: int = 16, seed: int = 0, num_classes: int = 10) -> nn.Module:
    """``width=64, num_classes=1000`` is ResNet-18's architecture."""
    return _randomized(ResNetLike(width, num_classes), seed)


class MobileNetV2(MobileNetV2Like):
    """MobileNetV2 (width 1.0) as in the paper's table: 3.5 M parameters, 1000 classes by default."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000):
        super().__init__(num_classes, stem=32, last=1280)


def mobilenet_v2_like(seed: int = 0, full_size: bool = False) -> nn.Module:
    """The trimmed, narrow net for tests; ``full_size``: MobileNetV2 itself."""
    return _randomized(MobileNetV2() if full_size else MobileNetV2Like(), seed)


def export_onnx(
    module: nn.Module,
    path: str | Path,
    *,
    dynamo: bool,
    input_shape: tuple[int, ...] = (1, 3, 64, 64),
    dynamic_batch: bool = True,
) -> Path:
    """Export ``module`` to ONNX with the legacy (``dynamo=False``) or the default exporter.

    The legacy exporter names tensors by module path (``/layer1/layer1.0/relu/Relu_output_0``)
    and embeds the weights; the default exporter names them ``relu_8`` and may keep the
    weights in ``NAME.onnx.data`` beside the model.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = (torch.randn(*input_shape),)
    names = {"input_names": ["x"], "output_names": ["logits"]}
    if dynamo:
        dynamic = {"x": {0: torch.export.Dim("batch")}} if dynamic_batch else None
        torch.onnx.export(module, example, path, dynamo=True, dynamic_shapes=dynamic, verbose=False, **names)
    else:
        dynamic = {"x": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
        with warnings.catch_warnings():  # the legacy exporter is chosen on purpose: it names tensors by module path
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(module, example, path, dynamo=False, dynamic_axes=dynamic, **names)
    return path


class _EncoderLayer(nn.Module):
    """Post-norm self-attention + feed-forward, written out so both exporters see plain ops."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5 + bias
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, d)
        x = self.norm1(x + self.proj(attended))
        return self.norm2(x + self.ff(x))


class TransformerEncoderLike(nn.Module):
    """Token and position embeddings, ``layers`` encoder layers, mean-pooled over unmasked tokens."""

    def __init__(self, vocab: int = 1000, dim: int = 128, heads: int = 4, hidden: int = 256, layers: int = 4,
                 max_len: int = 128, num_classes: int = 10):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(max_len, dim)
        self.layers = nn.ModuleList(_EncoderLayer(dim, heads, hidden) for _ in range(layers))
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)
        keep = attention_mask.to(x.dtype)
        bias = (1.0 - keep)[:, None, None, :] * -1e4  # masked keys get a large negative score
        for layer in self.layers:
            x = layer(x, bias)
        pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)
        return self.classifier(pooled)


def transformer_encoder_like(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TransformerEncoderLike().eval()


def export_transformer_onnx(module: nn.Module, path: str | Path, *, dynamo: bool, seq_len: int = 64) -> Path:
    """Export an encoder taking ``input_ids`` and ``attention_mask`` (int64 [N, T]) to ONNX, batch dynamic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = torch.randint(0, 1000, (1, seq_len))
    mask = torch.ones(1, seq_len, dtype=torch.int64)
    names = {"input_names": ["input_ids", "attention_mask"], "output_names": ["logits"]}
    if dynamo:
        batch = torch.export.Dim("batch")
        dynamic = {"input_ids": {0: batch}, "attention_mask": {0: batch}}
        torch.onnx.export(module, (ids, mask), path, dynamo=True, dynamic_shapes=dynamic, verbose=False, **names)
    else:
        axes = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "logits": {0: "batch"}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(module, (ids, mask), path, dynamo=False, dynamic_axes=axes, **names)
    return path
