"""The test CNN of ``testbed.tflite_models`` written in torch, with the same weights.

``splitpoint bench-backends benchmarks/backends_twin.py:tflite_cnn_twin model.tflite``
then runs one model on all three runtimes: onnxruntime and TorchScript from this
module, LiteRT from the flatbuffer. Input is NHWC, as in the .tflite model.
"""

from __future__ import annotations

import torch
from torch import nn

from testbed.tflite_models import CONVS, weights


class TfliteCnnTwin(nn.Module):
    """stem conv, residual block, 2x2 average pool, head conv, global mean, fully connected."""

    def __init__(self, seed: int = 0):
        super().__init__()
        w = weights(seed)
        self.convs = nn.ModuleDict()
        for name, cin, cout in CONVS:
            kernel, bias = w.convs[name]
            conv = nn.Conv2d(cin, cout, 3, padding=1)
            conv.weight.data = torch.from_numpy(kernel).permute(0, 3, 1, 2).contiguous()  # OHWI -> OIHW
            conv.bias.data = torch.from_numpy(bias)
            self.convs[name.replace("/", "_")] = conv
        self.fc = nn.Linear(16, 10)
        self.fc.weight.data, self.fc.bias.data = torch.from_numpy(w.fc[0]), torch.from_numpy(w.fc[1])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        c = self.convs
        stem = torch.relu(c["stem"](image.permute(0, 3, 1, 2)))
        block = torch.relu(c["block_conv2"](torch.relu(c["block_conv1"](stem))) + stem)
        head = torch.relu(c["head"](nn.functional.avg_pool2d(block, 2)))
        return self.fc(head.mean(dim=(2, 3)))


def tflite_cnn_twin() -> nn.Module:
    return TfliteCnnTwin().eval()
