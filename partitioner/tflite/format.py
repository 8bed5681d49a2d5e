""".tflite models for ``split`` and ``inspect`` (see ``partitioner.formats``): split in their own format.

Segments are .tflite flatbuffers cut from the main subgraph, golden outputs
and measurements come from LiteRT, and the full model is copied into the
bundle byte for byte. Splits are priced (``--candidates auto``, ``plan``)
from LiteRT profiles (``partitioner.profile_litert``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from partitioner.golden import Tensors
from partitioner.measure import TensorTable
from partitioner.tflite import SUFFIX
from partitioner.tflite.flatbuffer import serialize
from partitioner.tflite.measure import measure
from partitioner.tflite.segment import extract
from partitioner.tflite.source import TfliteSource
from partitioner.tflite.view import with_constants


@dataclass
class TfliteFormat:
    name: ClassVar[str] = "TFLite"
    model_file: ClassVar[str] = "model" + SUFFIX
    suffix: ClassVar[str] = SUFFIX
    engine_note: ClassVar[str] = " in LiteRT"
    node_word: ClassVar[str] = "operators"
    source: TfliteSource

    @classmethod
    def open(
        cls, path: str | Path, shapes: Mapping[str, Sequence[int]] | None, log: Callable[[str], None]
    ) -> TfliteFormat:
        return cls(TfliteSource.open(path, shapes, log))

    @property
    def opset(self) -> int:
        return self.source.model.version  # the TFLite schema version

    def golden_cases(self, count: int) -> list[tuple[Tensors, Tensors]]:
        return self.source.golden_cases(count)

    def measure(self, names: Iterable[str], computed: Mapping[str, np.ndarray], log: Callable[[str], None]) -> TensorTable:
        return measure(self.source, names, computed)

    def write_segment(
        self, path: Path, split_id: str, side: str, nodes: Collection[int], inputs: Sequence[str], outputs: Sequence[str],
        table: TensorTable,
    ) -> None:
        source = self.source
        indices = [list(map(source.index, names)) for names in (inputs, outputs)]
        path.write_bytes(serialize(extract(source.model, source.keys, with_constants(source.view, nodes), *indices)))

    def save_model(self, path: Path) -> list[Path]:
        shutil.copyfile(self.source.path, path)
        return [path]
