"""Runtime backends: one small session interface over the inference engines.

ONNX Runtime runs ``.onnx`` models and LiteRT runs ``.tflite`` models, behind
the same ``Session`` shape. Each engine is imported only when a model needs
it, so the edge loads no inference engine it does not use.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from splitpoint import dtypes
from splitpoint.bundle import TensorSpec
from splitpoint.errors import SplitpointError, WireError

LITERT_EXTRA = "pip install 'splitpoint[tflite]'"


class Session(Protocol):
    backend: str
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

    backend = "onnxruntime"

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


def _litert_interpreter(path: Path) -> Any:
    """LiteRT's Interpreter class, or tflite_runtime's where only that is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise SplitpointError(f"{path}: running .tflite models needs LiteRT: {LITERT_EXTRA}") from None
    return Interpreter


def _litert_spec(detail: dict[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) == len(detail["shape"]) else detail["shape"]
    try:
        dtype = dtypes.dtype_name(np.dtype(detail["dtype"]))
    except (WireError, TypeError):
        raise SplitpointError(f"tensor {detail['name']!r} has unsupported type {detail['dtype']}") from None
    return TensorSpec(detail["name"], dtype, tuple(int(d) if d >= 0 else None for d in dims))


class LiteRTSession:
    """A LiteRT interpreter with specs in manifest terms.

    Dynamic dimensions (-1 in the shape signature) are None in the specs and
    take their size from each call's inputs: the input is resized and the
    tensors reallocated only when a shape changes. An interpreter runs one
    call at a time, so calls from several threads take turns.
    ``threads`` sets the interpreter's threads (None: LiteRT's default, one).
    """

    backend = "litert"

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        interpreter = _litert_interpreter(self.path)
        try:
            self._interpreter = interpreter(model_path=str(self.path), num_threads=threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:  # LiteRT reports bad files and missing kernels this way
            raise SplitpointError(f"{self.path}: LiteRT cannot load it: {_litert_message(e)}") from None
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        self.inputs = [_litert_spec(d) for d in inputs]
        self.outputs = [_litert_spec(d) for d in outputs]
        names = [s.name for s in [*self.inputs, *self.outputs]]
        if len(set(names)) != len(names) or "" in names:
            raise SplitpointError(f"{self.path}: its input and output tensors need distinct, non-empty names: {names}")
        self._input_index = {d["name"]: d["index"] for d in inputs}
        self._shapes: dict[str, tuple[int, ...] | None] = {d["name"]: tuple(d["shape"]) for d in inputs}
        self._output_index = [(d["name"], d["index"]) for d in outputs]
        self._lock = threading.Lock()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self._input_index if n not in feeds]
        if missing:
            raise SplitpointError(f"{self.path}: missing input tensor(s) {missing}")
        with self._lock:
            try:
                self._resize({n: np.shape(feeds[n]) for n in self._input_index})
                for name, index in self._input_index.items():
                    self._interpreter.set_tensor(index, np.ascontiguousarray(feeds[name]))
                self._interpreter.invoke()
                return {name: self._interpreter.get_tensor(index) for name, index in self._output_index}
            except (ValueError, RuntimeError) as e:
                raise SplitpointError(f"{self.path}: LiteRT failed: {_litert_message(e)}") from None

    def _resize(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        changed = {n: s for n, s in shapes.items() if s != self._shapes[n]}
        if not changed:
            return
        try:
            for name, shape in changed.items():
                self._interpreter.resize_tensor_input(self._input_index[name], list(shape))
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError):
            self._shapes = dict.fromkeys(self._shapes)  # state unknown: the next call resizes every input
            raise
        self._shapes.update(changed)


def _litert_message(e: BaseException) -> str:
    """LiteRT's error in one line: its first meaningful line, naming unresolved custom ops."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    custom = [line for line in lines if "custom op" in line.lower()]
    return (custom or lines or [type(e).__name__])[0]


_BACKENDS = {"onnxruntime": OrtSession, "litert": LiteRTSession}


def load_session(path: str | Path, backend: str | None = None, threads: int | None = None) -> Session:
    """Open a segment or full model: with ``backend``, or the one its file type needs (LiteRT for .tflite)."""
    name = backend or ("litert" if Path(path).suffix == ".tflite" else "onnxruntime")
    if name not in _BACKENDS:
        raise SplitpointError(f"backend {name!r} is not available; use one of: {', '.join(_BACKENDS)}")
    return _BACKENDS[name](path, threads=threads)


def dtype_of(spec: TensorSpec) -> np.dtype:
    return dtypes.numpy_dtype(spec.dtype)
