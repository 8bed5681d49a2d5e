"""TFLite flatbuffers between disk and LiteRT's schema object API, and the facts read from them.

The schema ships with ai-edge-litert, so no TensorFlow is needed. Buffers are
written 16-byte aligned, as the TFLite converter writes them, so constant
tensors can be used in place by every kernel on every CPU.
"""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np

from partitioner.errors import PartitionError
from partitioner.tflite import IDENTIFIER
from splitpoint.backends import LITERT_EXTRA

try:
    from ai_edge_litert import schema_py_generated as schema
except ImportError:  # pragma: no cover - exercised only without the tflite extra
    raise PartitionError(f"splitting .tflite models needs LiteRT's flatbuffer schema: {LITERT_EXTRA}") from None

BUFFER_ALIGNMENT = 16

_OP_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
_TYPE_NAMES = {code: name for name, code in vars(schema.TensorType).items() if not name.startswith("_")}
_NUMPY = {
    schema.TensorType.FLOAT32: "float32",
    schema.TensorType.FLOAT16: "float16",
    schema.TensorType.FLOAT64: "float64",
    schema.TensorType.INT8: "int8",
    schema.TensorType.INT16: "int16",
    schema.TensorType.INT32: "int32",
    schema.TensorType.INT64: "int64",
    schema.TensorType.UINT8: "uint8",
    schema.TensorType.UINT16: "uint16",
    schema.TensorType.UINT32: "uint32",
    schema.TensorType.UINT64: "uint64",
    schema.TensorType.BOOL: "bool",
}


def read_model(path: str | Path) -> schema.ModelT:
    """The model in ``path`` as mutable schema objects; one-line errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise PartitionError(f"{path}: no such file")
    data = path.read_bytes()
    if data[4:8] != IDENTIFIER:
        raise PartitionError(f"{path}: not a TFLite flatbuffer (no {IDENTIFIER.decode()} file identifier)")
    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
    except Exception as e:  # flatbuffers raises assorted errors on corrupt input
        raise PartitionError(f"{path}: corrupt TFLite flatbuffer ({type(e).__name__}: {e})") from None
    if not model.subgraphs or not model.subgraphs[0].operators:
        raise PartitionError(f"{path}: the TFLite model has no operators in its main subgraph")
    if model.externalBuffers or any(b.offset > 1 for b in model.buffers or []):
        raise PartitionError(f"{path}: weights stored outside the flatbuffer (models over 2 GB) are not supported yet")
    return model


class _AlignedBuffer(schema.BufferT):
    """A buffer whose data starts on a ``BUFFER_ALIGNMENT`` boundary when packed."""

    def Pack(self, builder):  # noqa: N802 - the schema's method name
        if self.data is None or len(self.data) == 0:
            return super().Pack(builder)
        payload = np.asarray(self.data, dtype=np.uint8).tobytes()
        builder.StartVector(1, len(payload), BUFFER_ALIGNMENT)
        builder.head -= len(payload)
        builder.Bytes[builder.head : builder.head + len(payload)] = payload
        data = builder.EndVector()
        schema.BufferStart(builder)
        schema.BufferAddData(builder, data)
        return schema.BufferEnd(builder)


def serialize(model: schema.ModelT) -> bytes:
    """The flatbuffer of ``model``, with its file identifier and aligned buffers."""
    buffers = model.buffers
    model.buffers = [_aligned(b) for b in buffers or []]
    try:
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=IDENTIFIER)
    finally:
        model.buffers = buffers
    return bytes(builder.Output())


def _aligned(buffer: schema.BufferT) -> _AlignedBuffer:
    b = _AlignedBuffer()
    b.data, b.offset, b.size = buffer.data, buffer.offset, buffer.size
    return b


def op_name(model: schema.ModelT, op: schema.OperatorT) -> str:
    """``CONV_2D`` for builtins, the custom code for custom operators."""
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        return _text(code.customCode) or "CUSTOM"
    return _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")


def numpy_name(tensor_type: int) -> str | None:
    """The manifest dtype name of a TFLite tensor type (None when splitpoint cannot carry it)."""
    return _NUMPY.get(tensor_type)


def type_name(tensor_type: int) -> str:
    return _TYPE_NAMES.get(tensor_type, str(tensor_type))


def has_data(model: schema.ModelT, tensor: schema.TensorT) -> bool:
    """True for constant tensors: their values are in the file."""
    buffer = model.buffers[tensor.buffer] if 0 < tensor.buffer < len(model.buffers or []) else None
    return buffer is not None and buffer.data is not None and len(buffer.data) > 0


def _text(value: str | bytes | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def tensor_name(tensor: schema.TensorT) -> str:
    return _text(tensor.name)


def ints(values: object) -> list[int]:
    """An index or shape vector as ints (the object API gives numpy arrays, lists or None)."""
    return [] if values is None else [int(v) for v in values]  # type: ignore[attr-defined]


def body_subgraphs(op: schema.OperatorT) -> list[int]:
    """The subgraphs an operator runs (WHILE cond/body, IF branches, CALL_ONCE, StableHLO regions)."""
    found: list[int] = []
    for options in (op.builtinOptions, getattr(op, "builtinOptions2", None)):
        for attr, value in (vars(options) if options is not None else {}).items():
            if "subgraph" in attr.lower() and value is not None:
                found += list(value) if isinstance(value, list | np.ndarray) else [int(value)]
    return found
