"""ONNX models between disk, memory and onnxruntime, with the 2 GB protobuf limit in one place.

A serialized protobuf cannot exceed 2 GB, so large models are saved with their
weights in ``NAME.onnx.data`` beside them and handed to onnxruntime by path.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from partitioner.errors import PartitionError
from splitpoint.errors import first_line

PROTO_LIMIT = 2**31 - 2**20  # bytes; below the hard 2 GiB limit, with room for the graph itself
EXTERNAL_SUFFIX = ".data"


def load_model(path: str | Path) -> onnx.ModelProto:
    """Load a model file with its external data (resolved beside the model)."""
    path = Path(path)
    if not path.is_file():
        raise PartitionError(f"{path}: no such file")
    try:
        model = onnx.load(path, load_external_data=True)
    except DecodeError as e:
        raise PartitionError(f"{path}: not an ONNX model ({e})") from None
    except (FileNotFoundError, onnx.checker.ValidationError) as e:
        raise PartitionError(f"{path}: its external data cannot be read ({first_line(e)})") from None
    except Exception as e:  # onnx raises assorted errors for files that are not models
        raise PartitionError(f"{path}: not an ONNX model ({first_line(e)})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise PartitionError(f"{path}: not an ONNX model (it has no graph nodes)")
    return model


def fits_in_proto(model: onnx.ModelProto) -> bool:
    return model.ByteSize() < PROTO_LIMIT


def save_model(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Write ``model`` to ``path``; returns the files written (model first, then external data).

    Weights are embedded when the model fits in one protobuf, else written to
    ``path.name + ".data"``. ``model`` is left holding its weights either way.
    """
    if fits_in_proto(model):
        onnx.save_model(model, path)
        return [path]
    data = path.with_name(path.name + EXTERNAL_SUFFIX)
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    onnx.load_external_data_for_model(model, str(path.parent))  # saving moved the weights out of the proto
    return [path, data]


def check_model_file(path: Path, what: str) -> None:
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise PartitionError(f"{what} is not valid ONNX: {first_line(e)}") from None


def session(model: onnx.ModelProto | Path, what: str) -> ort.InferenceSession:
    """An onnxruntime CPU session with default (ORT_ENABLE_ALL) optimizations."""
    try:
        if isinstance(model, Path):
            return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        if fits_in_proto(model):
            return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        with tempfile.TemporaryDirectory(prefix="splitpoint-") as tmp:
            path = Path(tmp) / "model.onnx"
            save_model(model, path)
            return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types per failure
        raise PartitionError(f"onnxruntime cannot load {what}: {first_line(e)}") from None
