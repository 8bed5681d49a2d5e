"""Element types: numpy names (manifests), OIP datatypes (wire), ONNX codes.

The ONNX element-type codes are written out here so the edge can map them
without importing onnx.
"""

from __future__ import annotations

import numpy as np

from splitpoint.errors import WireError

try:  # bfloat16 arrays come from ml_dtypes (an onnx dependency); optional on the edge
    import ml_dtypes as _ml_dtypes

    _BF16: np.dtype | None = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - exercised only without ml_dtypes
    _BF16 = None

# numpy name -> (OIP datatype, ONNX TensorProto code)
_TABLE: dict[str, tuple[str, int]] = {
    "bool": ("BOOL", 9),
    "uint8": ("UINT8", 2),
    "uint16": ("UINT16", 4),
    "uint32": ("UINT32", 12),
    "uint64": ("UINT64", 13),
    "int8": ("INT8", 3),
    "int16": ("INT16", 5),
    "int32": ("INT32", 6),
    "int64": ("INT64", 7),
    "float16": ("FP16", 10),
    "float32": ("FP32", 1),
    "float64": ("FP64", 11),
}
if _BF16 is not None:
    _TABLE["bfloat16"] = ("BF16", 16)

_BY_OIP = {oip: name for name, (oip, _) in _TABLE.items()}
_BY_ONNX = {code: name for name, (_, code) in _TABLE.items()}


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype for a manifest dtype name."""
    if name == "bfloat16" and _BF16 is not None:
        return _BF16
    if name not in _TABLE:
        raise WireError(f"unsupported dtype {name!r}")
    return np.dtype(name)


def dtype_name(dtype: np.dtype) -> str:
    name = np.dtype(dtype).name
    if name not in _TABLE:
        raise WireError(f"unsupported dtype {name!r}")
    return name


def to_oip(dtype: np.dtype | str) -> str:
    """OIP datatype string (FP32, INT64, ...) for a numpy dtype or name."""
    name = dtype if isinstance(dtype, str) else dtype_name(dtype)
    if name not in _TABLE:
        raise WireError(f"unsupported dtype {name!r}")
    return _TABLE[name][0]


def from_oip(datatype: str) -> np.dtype:
    """numpy dtype for an OIP datatype; WireError for unknown or unsupported ones."""
    if datatype not in _BY_OIP:
        raise WireError(f"unsupported datatype {datatype!r}")
    return numpy_dtype(_BY_OIP[datatype])


def from_onnx(code: int) -> str:
    """Manifest dtype name for an ONNX TensorProto element type code."""
    if code not in _BY_ONNX:
        raise WireError(f"unsupported ONNX element type {code}")
    return _BY_ONNX[code]


def supported_names() -> list[str]:
    return list(_TABLE)


def float_info(dtype: np.dtype) -> np.finfo | None:
    """numpy's finfo for a floating dtype, bfloat16 included (numpy does not know it); None for the others."""
    if _BF16 is not None and dtype == _BF16:
        return _ml_dtypes.finfo(dtype)
    return np.finfo(dtype) if dtype.kind in "fc" else None
