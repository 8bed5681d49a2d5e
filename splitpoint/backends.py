"""Runtime backends: one small session interface over the inference engines.

ONNX Runtime runs ``.onnx`` models, LiteRT runs ``.tflite`` models and
PyTorch runs ``torch.export`` programs (``.pt2``) and TorchScript ``.pt``
files, behind the same ``Session`` shape.
Each engine is imported only when a model needs it, so the edge loads no
inference engine it does not use (and ``import edge`` never imports torch).

The edge holds the full model, prefixes and suffixes: the same weights in
several files. ``SharedWeights`` makes onnxruntime sessions of one model hold
each distinct weight once.
"""

from __future__ import annotations

import ctypes
import functools
import json
import threading
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from splitpoint import dtypes
from splitpoint.bundle import TensorSpec
from splitpoint.errors import SplitpointError, WireError, first_line

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


@functools.cache
def _onnx_model_class() -> Any:
    """A protobuf class that reads an ONNX file's top-level initializers and skips the rest.

    Declared at run time with the field numbers of onnx.proto, so the edge
    reads weights without importing onnx.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(name="splitpoint_onnx_weights.proto", package="splitpoint_onnx", syntax="proto2")
    tensor = f.message_type.add(name="TensorProto")
    for name, number, kind, label in [
        ("dims", 1, field.TYPE_INT64, field.LABEL_REPEATED),
        ("data_type", 2, field.TYPE_INT32, field.LABEL_OPTIONAL),
        ("name", 8, field.TYPE_STRING, field.LABEL_OPTIONAL),
        ("raw_data", 9, field.TYPE_BYTES, field.LABEL_OPTIONAL),
        ("data_location", 14, field.TYPE_INT32, field.LABEL_OPTIONAL),
    ]:
        tensor.field.add(name=name, number=number, type=kind, label=label)
    f.message_type.add(name="GraphProto").field.add(
        name="initializer", number=5, type=field.TYPE_MESSAGE, type_name=".splitpoint_onnx.TensorProto",
        label=field.LABEL_REPEATED)
    f.message_type.add(name="ModelProto").field.add(
        name="graph", number=7, type=field.TYPE_MESSAGE, type_name=".splitpoint_onnx.GraphProto",
        label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("splitpoint_onnx.ModelProto"))


class SharedWeights:
    """Initializers held once for all the onnxruntime sessions of one model.

    Prefix and suffix files repeat the full model's weights; each session
    would keep its own copy. Here every distinct initializer (same name, same
    bytes) becomes one OrtValue handed to each session with
    ``SessionOptions.add_initializer``, and the sessions share one arena for
    their activations. Only weights stored inline as raw data are shared;
    others load as usual. Sharing rules out onnxruntime's NCHWc layout pass,
    which would copy the weights per session (see benchmarks/edge_footprint.md
    for what that costs in latency).
    """

    def __init__(self) -> None:
        self._values: dict[str, list[tuple[np.ndarray, Any]]] = {}  # name -> (array, OrtValue) per distinct content
        self.references = 0  # initializers handed to sessions

    @property
    def distinct(self) -> int:
        """Weights held: the sessions refer to these ``references`` times."""
        return sum(len(v) for v in self._values.values())

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for v in self._values.values() for a, _ in v)

    def configure(self, path: Path, opts: Any) -> dict[str, Any]:
        """Hand ``path``'s weights to ``opts``; returns the InferenceSession keyword arguments sharing needs."""
        import onnxruntime as ort

        try:
            model = _onnx_model_class().FromString(path.read_bytes())
        except Exception:  # protobuf's DecodeError, or no such file: onnxruntime will name the problem
            return {}
        for t in model.graph.initializer:
            array = _inline_weight(t)
            if array is not None:
                opts.add_initializer(t.name, self._value(t.name, array, ort))
                self.references += 1
        _register_shared_arena()
        opts.add_session_config_entry("session.use_env_allocators", "1")
        return {"disabled_optimizers": ["NchwcTransformer"]}

    def _value(self, name: str, array: np.ndarray, ort: Any) -> Any:
        same = self._values.setdefault(name, [])
        for held, value in same:
            if held.shape == array.shape and held.dtype == array.dtype and np.array_equal(held, array):
                return value
        held = array.copy()  # owned and aligned; frees the parsed file
        same.append((held, value := ort.OrtValue.ortvalue_from_numpy(held)))
        return value



@functools.cache
def _register_shared_arena() -> None:
    """The CPU arena that sessions with ``session.use_env_allocators`` share: one per process."""
    import onnxruntime as ort

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, None)


def _inline_weight(t: Any) -> np.ndarray | None:
    """A parsed initializer's array, read-only over the parsed bytes; None unless it is inline raw data."""
    if t.data_location or not t.raw_data:
        return None  # external or typed data: onnxruntime loads it itself
    try:
        dtype = dtypes.numpy_dtype(dtypes.from_onnx(t.data_type))
    except WireError:
        return None
    return np.frombuffer(t.raw_data, dtype).reshape(tuple(t.dims))


def release_free_memory() -> None:
    """Return the heap's free pages to the OS (glibc only; elsewhere nothing).

    Loading parses every model file and drops the parsed copies: without this
    they stay in the process's resident memory until reused.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


GRAPH_OPT_LEVELS = ("basic", "extended", "all")
AUTO_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def ort_providers(names: Sequence[str] | None) -> list[str]:
    """onnxruntime execution providers in order of preference, checked against this build.

    ``names`` are full or short names (``cuda``, ``CPUExecutionProvider``);
    None means CUDA when this build has it, then the CPU (which also runs the
    nodes CUDA cannot).
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    if names is None:
        return [p for p in AUTO_PROVIDERS if p in available]
    resolved = []
    for name in names:
        match = [p for p in available if p.lower() in (name.lower(), name.lower() + "executionprovider")]
        if not match:
            raise SplitpointError(f"execution provider {name!r} is not available in this onnxruntime; "
                                  f"it has: {', '.join(available)}")
        resolved.append(match[0])
    return resolved


def check_graph_opt(level: str) -> None:
    if level not in GRAPH_OPT_LEVELS:
        raise SplitpointError(f"graph optimisation level must be one of {', '.join(GRAPH_OPT_LEVELS)}, not {level!r}")


class OrtSession:
    """An onnxruntime.InferenceSession with specs in manifest terms.

    ``threads`` sets intra-op threads (None: onnxruntime's default), ``graph_opt``
    the graph optimisation level, ``providers`` the execution providers (see
    ``ort_providers``; the default is the CPU alone). ``shared`` holds the
    weights this session has in common with others. Idle threads never spin:
    every process here holds several sessions (prefix, suffix, full model; one
    per served model), and a session spinning after its run takes the cores
    the next one needs, doubling its run time; a lone session loses next to nothing.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        shared: SharedWeights | None = None,
        *,
        graph_opt: str = "all",
        providers: Sequence[str] | None = ("CPUExecutionProvider",),
    ):
        import onnxruntime as ort

        check_graph_opt(graph_opt)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{graph_opt.upper()}")
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        extra = shared.configure(Path(path), opts) if shared is not None else {}
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=ort_providers(providers), **extra)
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise SplitpointError(f"{path}: onnxruntime cannot load it: {str(e).splitlines()[0]}") from None
        self.path = Path(path)
        self._shared = shared  # its OrtValues must outlive the session
        self.providers = self._session.get_providers()
        threads_text = f"{threads} intra-op threads" if threads else "default threads"
        self.description = f"onnxruntime on {', '.join(self.providers)}, graph optimisation {graph_opt}, {threads_text}"
        self.inputs = [_spec(a) for a in self._session.get_inputs()]
        self.outputs = [_spec(a) for a in self._session.get_outputs()]
        self._input_names = {s.name for s in self.inputs}
        self._output_names = [o.name for o in self.outputs]

    @property
    def options(self) -> Any:
        """The onnxruntime.SessionOptions the session runs with."""
        return self._session.get_session_options()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._output_names, {k: v for k, v in feeds.items() if k in self._input_names})
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

    def __init__(self, path: str | Path, threads: int | None = None, shared: SharedWeights | None = None):
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


TORCH_SPECS = "splitpoint.json"  # the extra file of a TorchScript or torch.export archive that holds its tensor specs


def _specs_json(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> str:
    return json.dumps({k: [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in v]
                       for k, v in (("inputs", inputs), ("outputs", outputs))})


def save_torchscript(module: Any, path: str | Path, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> Path:
    """Save a scripted or traced module with the specs ``TorchSession`` needs (TorchScript keeps no names or dtypes)."""
    import torch

    torch.jit.save(module, str(path), _extra_files={TORCH_SPECS: _specs_json(inputs, outputs)})
    return Path(path)


def save_exported(program: Any, path: str | Path, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> Path:
    """Save a ``torch.export`` program (``.pt2``) with the specs ``TorchSession`` needs: its inputs are
    positional and its outputs unnamed."""
    import torch

    torch.export.save(program, str(path), extra_files={TORCH_SPECS: _specs_json(inputs, outputs)})
    return Path(path)


class TorchSession:
    """A PyTorch module run under ``torch.inference_mode``, with specs from its archive: a
    ``torch.export`` program (``.pt2``, see ``save_exported``) or TorchScript (any other file, see
    ``save_torchscript``).

    Inputs go to ``forward`` in the order of the specs; a tensor, or a tuple or
    list of tensors, comes back named by the output specs. ``threads`` sets
    ``torch.set_num_threads``, which is per process: the last session opened wins.
    """

    backend = "torch"

    def __init__(self, path: str | Path, threads: int | None = None, shared: SharedWeights | None = None):
        self.path = Path(path)
        try:
            import torch
        except ImportError:
            raise SplitpointError(f"{self.path}: running PyTorch models needs PyTorch: pip install torch") from None
        self._torch = torch
        exported = self.path.suffix == ".pt2"
        kind, saver = ("a torch.export program", "save_exported") if exported else ("TorchScript", "save_torchscript")
        extra = {TORCH_SPECS: ""}
        try:
            if exported:
                self._module = torch.export.load(str(self.path), extra_files=extra).module()
            else:
                self._module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra).eval()
        except (RuntimeError, ValueError, KeyError, zipfile.BadZipFile) as e:  # torch reports bad archives these ways
            raise SplitpointError(f"{self.path}: torch cannot load it as {kind}: {first_line(e)}") from None
        if not extra[TORCH_SPECS]:
            raise SplitpointError(f"{self.path}: no tensor specs in the archive; save it with "
                                  f"splitpoint.backends.{saver}(module, path, inputs, outputs)")
        specs = json.loads(extra[TORCH_SPECS])
        self.inputs = [TensorSpec.from_json(t) for t in specs["inputs"]]
        self.outputs = [TensorSpec.from_json(t) for t in specs["outputs"]]
        if threads:
            torch.set_num_threads(threads)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [s.name for s in self.inputs if s.name not in feeds]
        if missing:
            raise SplitpointError(f"{self.path}: missing input tensor(s) {missing}")
        args = [self._torch.from_numpy(np.ascontiguousarray(feeds[s.name])) for s in self.inputs]
        try:
            with self._torch.inference_mode():
                result = self._module(*args)
        except (RuntimeError, AssertionError) as e:  # an exported program's shape guards assert
            raise SplitpointError(f"{self.path}: torch failed: {first_line(e)}") from None
        values = list(result) if isinstance(result, tuple | list) else [result]
        if len(values) != len(self.outputs):
            raise SplitpointError(f"{self.path}: forward returned {len(values)} tensor(s), its specs name {len(self.outputs)}")
        return {s.name: v.detach().numpy() for s, v in zip(self.outputs, values)}  # a weight returned as is needs grad


_BACKENDS = {"onnxruntime": OrtSession, "litert": LiteRTSession, "torch": TorchSession}
_BY_SUFFIX = {".tflite": "litert", ".pt": "torch", ".pt2": "torch"}


def load_session(
    path: str | Path, backend: str | None = None, threads: int | None = None, shared: SharedWeights | None = None
) -> Session:
    """Open a segment or full model: with ``backend``, or the one its file type needs
    (LiteRT for .tflite, PyTorch for .pt2 and .pt, onnxruntime otherwise).

    ``shared`` pools weights across the onnxruntime sessions of one model; other backends ignore it.
    """
    name = backend or _BY_SUFFIX.get(Path(path).suffix, "onnxruntime")
    if name not in _BACKENDS:
        raise SplitpointError(f"backend {name!r} is not available; use one of: {', '.join(_BACKENDS)}")
    return _BACKENDS[name](path, threads=threads, shared=shared)
