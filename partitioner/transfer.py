"""What sending a tensor costs, measured with the codec on the real tensor of the golden run.

Encoded size depends on the values (zstd on post-ReLU activations is not zstd
on logits), so nothing is guessed from shapes: the full model runs once on
golden input 0 with every tensor that could cross a cut exposed, and each is
encoded and decoded with the chosen codec, timing the median of a few rounds.
The timings are this machine's: encoding happens on the edge and decoding on
the cloud, so they are an estimate for both.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from partitioner.formats import ModelSource
from splitpoint import codec as codec_mod
from splitpoint.errors import SplitpointError


@dataclass(frozen=True)
class TensorTransfer:
    name: str
    raw_bytes: int
    encoded_bytes: int
    encode_ms: float
    decode_ms: float


@dataclass(frozen=True)
class Transfers:
    """Per-tensor transfer costs, the raw size of every tensor of the run, and what cannot be sent."""

    codec: str
    tensors: dict[str, TensorTransfer]  # tensors the codec can send
    sizes: dict[str, int]  # raw bytes of every tensor measured, sendable or not
    unsendable: dict[str, str]  # tensor -> why the codec refuses it


def measure_transfers(
    source: ModelSource, codec: str, log: Callable[[str], None], repeats: int = 3
) -> Transfers:
    """Sizes of every tensor of golden run 0; encoded size and codec times of each one a cut could send."""
    c = codec_mod.parse(codec)
    view = source.view
    inputs = source.sample(0)
    produced = [o for i in view.order for o in view.graph.node[i].output if o]
    exposed = [n for n in dict.fromkeys([*produced, *view.outputs]) if n not in inputs]
    log(f"running the model once with {len(exposed)} tensors exposed, to measure {c.spec} on real tensors")
    values = dict(inputs)
    values.update(source.values(exposed, inputs))
    read = {t for ts in view.reads.values() for t in ts}
    tensors: dict[str, TensorTransfer] = {}
    unsendable: dict[str, str] = {}
    for name, value in values.items():
        if (name in read or name in inputs) and not view.is_kept_constant(name):
            try:
                tensors[name] = _timed(name, np.asarray(value), c, repeats)
            except SplitpointError as e:
                unsendable[name] = str(e)
    return Transfers(c.spec, tensors, {n: int(np.asarray(v).nbytes) for n, v in values.items()}, unsendable)


def _timed(name: str, value: np.ndarray, c: codec_mod.Codec, repeats: int) -> TensorTransfer:
    encode_ms: list[float] = []
    decode_ms: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoded = c.encode(value, name)
        encode_ms.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        codec_mod.decode(encoded.data, encoded.params, dtype=value.dtype, shape=value.shape, name=name)
        decode_ms.append((time.perf_counter() - start) * 1e3)
    return TensorTransfer(name, int(value.nbytes), len(encoded.data), statistics.median(encode_ms),
                          statistics.median(decode_ms))


def sent_cost(transfers: Transfers, names: Sequence[str]) -> tuple[int, float, float]:
    """Encoded bytes, encode ms and decode ms of sending ``names`` together."""
    items = [transfers.tensors[n] for n in names]
    return sum(t.encoded_bytes for t in items), sum(t.encode_ms for t in items), sum(t.decode_ms for t in items)
