"""Runtime backends: one small session interface over the inference engines.

ONNX Runtime is the default and the only engine the walking skeleton needs;
LiteRT and PyTorch plug in behind the same ``Session`` shape later.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from splitpoint import dtypes
from splitpoint.bundle import TensorSpec
from splitpoint.errors import SplitpointError


class Session(Protocol):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


_ORT_TYPES = {
    "tensor(bool)": "bool",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(float16)": "float16",
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16",
}


def _spec(arg) -> TensorSpec:
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        raise SplitpointError(f"tensor {arg.name!r} has unsupported type {arg.type}")
    return TensorSpec(arg.name, dtype, tuple(arg.shape))


class OrtSession:
    """An onnxruntime.InferenceSession with specs in manifest terms.

    ``threads`` sets intra-op threads (None: onnxruntime's default).
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise SplitpointError(f"{path}: onnxruntime cannot load it: {str(e).splitlines()[0]}") from None
        self.path = Path(path)
        self.inputs = [_spec(a) for a in self._session.get_inputs()]
        self.outputs = [_spec(a) for a in self._session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = {s.name for s in self.inputs}
        values = self._session.run(self._output_names, {k: v for k, v in feeds.items() if k in names})
        return dict(zip(self._output_names, values))


def load_session(path: str | Path, backend: str = "onnxruntime", threads: int | None = None) -> Session:
    """Open a segment or full model with the named backend."""
    if backend != "onnxruntime":
        raise SplitpointError(f"backend {backend!r} is not available; use 'onnxruntime'")
    return OrtSession(path, threads=threads)


def dtype_of(spec: TensorSpec) -> np.dtype:
    return dtypes.numpy_dtype(spec.dtype)
