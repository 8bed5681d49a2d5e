"""Tensor codec: numpy arrays to OIP raw bytes plus one tensor parameter, and back.

The OIP ``datatype`` and ``shape`` always describe the logical tensor. The tensor
parameter ``PARAM`` names what was done to the raw bytes; without it they are plain
OIP raw data (row-major, little-endian, no padding), so any OIP peer can read them.

A codec is an optional lossy stage followed by an entropy stage:

- lossy: ``fp16`` (float32/float64 sent as float16), ``int8`` (affine uint8, one
  scale and zero point per tensor), ``int8-channel`` (one per channel along axis 1,
  or axis 0 for 1-D tensors);
- entropy: ``raw``, ``zstd[:LEVEL]``, ``shuffle-zstd[:LEVEL]`` (bytes regrouped so
  byte k of every element sits together, then zstd).

The encoder writes the canonical spec of what it actually applied: lossy stages are
dropped for integer, bool and empty tensors, ``fp16`` for tensors already 16-bit,
and shuffling for 1-byte elements. Lossy stages refuse what they cannot represent
(CodecError naming the tensor): ``fp16`` refuses finite values beyond the float16
range, ``int8`` refuses NaN and inf. Quantisation parameters cannot be OIP
parameters (those hold no floats), so they lead the payload in a little-endian,
versioned header:

    u8 version (1) | u8 per_channel (0/1) | u16 axis | u32 channels
    | f64 scale[channels] | u8 zero_point[channels] | u8 data[elements]

with ``value = (data - zero_point) * scale``.

The decoder trusts nothing: dtype, shape, parameter and every size are checked
against ``max_bytes`` before anything is allocated or decompressed, and every
failure is one CodecError naming the tensor.
"""

from __future__ import annotations

import functools
import math
import operator
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import zstandard

from splitpoint import defaults
from splitpoint.dtypes import dtype_name, float_info, numpy_dtype, supported_names, to_oip
from splitpoint.errors import CodecError, WireError

PARAM = "splitpoint.codec"
MAX_LEVEL = zstandard.MAX_COMPRESSION_LEVEL

_LOSSY = ("fp16", "int8", "int8-channel")
_ENTROPY = ("raw", "zstd", "shuffle-zstd")
_FLOATS = frozenset(numpy_dtype(n) for n in supported_names() if n in ("float16", "float32", "float64", "bfloat16"))
_INT64_MAX = (1 << 63) - 1
_INDEX_MAX = int(np.iinfo(np.intp).max)  # numpy's limit on an array's extent in bytes, even an empty one
_MAX_DIMS = 32  # numpy 1.x's limit (numpy 2 allows 64)
_ZSTD_MAGIC = struct.pack("<I", zstandard.MAGIC_NUMBER)
_QHEADER = struct.Struct("<BBHI")
_QVERSION = 1
_BLOCK = 1 << 16  # elements per (de)quantisation block: bounds temporaries, stays in cache


@dataclass(frozen=True)
class Encoded:
    """Raw bytes for OIP ``raw_*_contents`` and the tensor parameters announcing them."""

    data: bytes | memoryview  # raw: a view of the array's bytes, copied once where the message is framed
    params: dict[str, str | int | bool]


@dataclass(frozen=True)
class Codec:
    """An optional lossy stage and an entropy stage; build one with ``parse``."""

    lossy: str | None
    entropy: str
    level: int | None

    def __post_init__(self) -> None:
        zstd = self.entropy in ("zstd", "shuffle-zstd")
        if (
            self.lossy not in (None, *_LOSSY)
            or self.entropy not in _ENTROPY
            or (self.level is None) == zstd
            or (zstd and not (isinstance(self.level, int) and 1 <= self.level <= MAX_LEVEL))
        ):
            raise CodecError(f"invalid codec stages {self.lossy!r}, {self.entropy!r}, level {self.level!r}")

    @property
    def spec(self) -> str:
        """The canonical spec string, e.g. ``fp16+zstd:3``."""
        stages = [self.lossy] if self.lossy else []
        if self.entropy != "raw":
            stages.append(f"{self.entropy}:{self.level}")
        return "+".join(stages) or "raw"

    @property
    def lossless(self) -> bool:
        return self.lossy is None

    def encode(self, array: np.ndarray, name: str = "tensor") -> Encoded:
        """Encode ``array`` as row-major little-endian bytes through this codec's stages."""
        arr = _canonical(array, name)
        done = self._applied_to(arr.dtype, arr.shape)
        if done.lossy == "fp16":
            payload = _to_fp16(arr, name)
        elif done.lossy is not None:
            payload = _quantise(arr, _channel_axis(arr.shape) if done.lossy == "int8-channel" else None, name)
        else:
            payload = arr
        flat = payload.reshape(-1).view(np.uint8)
        data: bytes | memoryview
        if done.entropy == "raw":
            data = memoryview(flat)
        else:
            if done.entropy == "shuffle-zstd":
                flat = _shuffle(flat, payload.dtype.itemsize)
            data = _compressor(done.level).compress(flat)
        return Encoded(data, {} if done.spec == "raw" else {PARAM: done.spec})

    def _applied_to(self, dtype: np.dtype, shape: tuple[int, ...]) -> Codec:
        """The stages that make sense for this tensor, which is what the params announce."""
        lossy = self.lossy
        if dtype not in _FLOATS or math.prod(shape) == 0 or (lossy == "fp16" and dtype.itemsize == 2):
            lossy = None
        if lossy == "int8-channel" and not shape:
            lossy = "int8"
        entropy = self.entropy
        if entropy == "shuffle-zstd" and _payload_itemsize(lossy, dtype) == 1:
            entropy = "zstd"
        return Codec(lossy, entropy, self.level)


def available() -> list[str]:
    """The spec names; every zstd stage takes an optional ``:LEVEL``."""
    tails = ["", "+zstd", "+shuffle-zstd"]
    return ["raw", "zstd", "shuffle-zstd"] + [lossy + tail for lossy in _LOSSY for tail in tails]


def parse(spec: str | Codec) -> Codec:
    """The Codec for a spec string such as ``shuffle-zstd:5`` or ``int8+zstd``."""
    if isinstance(spec, Codec):
        return spec
    if not isinstance(spec, str):
        raise CodecError(f"codec spec must be a string, got {type(spec).__name__}")
    return _parse(spec)


@functools.lru_cache(maxsize=256)  # a spec arrives with every tensor; errors are not cached
def _parse(spec: str) -> Codec:
    head, plus, rest = spec.partition("+")
    lossy = None
    if plus:
        if head not in _LOSSY or rest in ("", "raw"):
            raise _bad_spec(spec)
        lossy = head
    elif spec in _LOSSY:
        return Codec(spec, "raw", None)
    else:
        rest = spec
    entropy, colon, level_text = rest.partition(":")
    if entropy == "raw" and not colon and lossy is None:
        return Codec(None, "raw", None)
    if entropy not in ("zstd", "shuffle-zstd"):
        raise _bad_spec(spec)
    if not colon:
        return Codec(lossy, entropy, defaults.ZSTD_LEVEL)
    if not (level_text.isascii() and level_text.isdigit() and 1 <= int(level_text) <= MAX_LEVEL):
        raise CodecError(f"codec {_shown(spec)}: zstd level must be an integer from 1 to {MAX_LEVEL}")
    return Codec(lossy, entropy, int(level_text))


def encode(array: np.ndarray, codec: str | Codec = "raw", name: str = "tensor") -> Encoded:
    """Encode ``array`` with ``codec`` (a spec string or a Codec)."""
    return parse(codec).encode(array, name)


def decode(
    data: bytes | memoryview,
    params: Mapping[str, str | int | bool],
    *,
    dtype: np.dtype,
    shape: Sequence[int],
    name: str = "tensor",
    max_bytes: int = defaults.MAX_DECODED_BYTES,
    copy: bool = True,
) -> np.ndarray:
    """The writable, owned array of ``dtype`` and ``shape`` that ``data`` encodes.

    ``params`` are the tensor's parameters; only ``PARAM`` is read. With
    ``copy=False`` raw lossless data comes back as a read-only view of ``data``
    (possibly unaligned), for a reader that only reads it, as onnxruntime reads
    its inputs. Raises CodecError, and nothing else, for anything that does not match.
    """
    dtype = _declared_dtype(dtype, name)
    shape = _declared_shape(shape, name)
    codec = _codec_param(params, name)
    size = _payload_size(codec, dtype, shape, max_bytes, name)
    buf = _byte_view(data, name)
    if codec.entropy == "raw":
        if len(buf) != size:
            kind = to_oip(dtype) if codec.lossless else f"{codec.spec} payload"
            raise _fail(name, f"expected {size} bytes of {kind} for shape {_fmt(shape)}, got {len(buf)}")
        payload: bytes | memoryview | np.ndarray = buf
    else:
        payload = _inflate(buf, size, name, codec.spec)
        if codec.entropy == "shuffle-zstd":
            payload = _unshuffle(payload, _payload_itemsize(codec.lossy, dtype))
    if not copy and codec.entropy == "raw" and codec.lossy is None and dtype.kind != "b":
        return np.frombuffer(payload, _little(dtype)).reshape(shape)
    out = np.empty(shape, _little(dtype))
    if codec.lossy is None:
        out.reshape(-1).view(np.uint8)[:] = np.frombuffer(payload, np.uint8)
        if dtype.kind == "b" and (out.reshape(-1).view(np.uint8) > 1).any():
            raise _fail(name, "BOOL data holds bytes other than 0 and 1")
    elif codec.lossy == "fp16":
        with np.errstate(invalid="ignore"):  # NaN payloads are data; ml_dtypes warns casting them to bfloat16
            out[...] = np.frombuffer(payload, "<f2").reshape(shape)
    else:
        _dequantise(payload, out, _channel_axis(shape) if codec.lossy == "int8-channel" else None, name)
    return out


def _payload_size(codec: Codec, dtype: np.dtype, shape: tuple[int, ...], max_bytes: int, name: str) -> int:
    """Bytes the payload must have once the entropy stage is undone; refuses what is over the limit."""
    count = math.prod(shape)
    if count > _INT64_MAX:
        raise _fail(name, f"{_described(dtype, shape)} has more elements than int64 can count")
    if math.prod(max(d, 1) for d in shape) * dtype.itemsize > _INDEX_MAX:
        raise _fail(name, f"{_described(dtype, shape)} is too large for a numpy array, even empty")
    if count * dtype.itemsize > max_bytes:
        raise _fail(name, f"{_described(dtype, shape)} needs {count * dtype.itemsize} bytes, {_over(max_bytes)}")
    if codec.lossy and dtype not in _FLOATS:
        raise _fail(name, f"codec {codec.spec} applies only to floating tensors, not {_described(dtype, shape)}")
    if codec.lossy == "int8-channel" and not shape:
        raise _fail(name, "codec int8-channel needs a tensor with at least one dimension, got a scalar")
    if codec.lossy in ("int8", "int8-channel"):
        channels = shape[_channel_axis(shape)] if codec.lossy == "int8-channel" else 1
        size = _QHEADER.size + 9 * channels + count
    else:
        size = count * _payload_itemsize(codec.lossy, dtype)
    if size > max_bytes:
        raise _fail(name, f"{codec.spec} payload for {_described(dtype, shape)} needs {size} bytes, {_over(max_bytes)}")
    return size


# -- stages ------------------------------------------------------------------------


def _to_fp16(arr: np.ndarray, name: str) -> np.ndarray:
    """float16 copy of ``arr``; refuses finite values that would round to infinity."""
    with np.errstate(over="ignore"):
        half = arr.astype("<f2")
    if np.isinf(half).any():
        overflow = np.isinf(half) & np.isfinite(arr)
        if overflow.any():
            index = np.unravel_index(int(np.argmax(overflow)), arr.shape)
            raise _fail(
                name,
                f"value {float(arr[index])!r} at index {list(map(int, index))} is beyond the float16 range "
                f"(+-65504); use a lossless codec or int8",
            )
    return half


def _quantise(arr: np.ndarray, axis: int | None, name: str) -> np.ndarray:
    """Header plus uint8 data, with the tensor's (or each channel's) range mapped onto 0..255.

    The range always includes 0, so zeros (ReLU's output) come back exactly.
    """
    rows, cols, channels = _layout(arr.shape, axis)
    grid = arr.reshape(rows // channels, channels, cols)
    with np.errstate(invalid="ignore"):
        lo = grid.min(axis=(0, 2)).astype(np.float64)
        hi = grid.max(axis=(0, 2)).astype(np.float64)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise _fail(name, "int8 quantisation needs finite values, found NaN or inf; use a lossless codec")
    if channels > 0xFFFFFFFF:
        raise _fail(name, f"int8-channel supports at most {0xFFFFFFFF} channels, got {channels}")
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    scale = hi / 255 - lo / 255  # not (hi - lo) / 255, which overflows for float64 extremes
    # all-zero channels get scale 1; ranges so small the division underflows, the least step
    scale = np.where(hi > lo, np.maximum(scale, np.finfo(np.float64).smallest_subnormal), 1.0)
    zero = np.clip(np.rint(-lo / scale), 0, 255)
    header = _QHEADER.pack(_QVERSION, axis is not None, axis or 0, channels)
    out = np.empty(_QHEADER.size + 9 * channels + arr.size, np.uint8)
    out[: _QHEADER.size] = np.frombuffer(header, np.uint8)
    out[_QHEADER.size : _QHEADER.size + 8 * channels] = scale.astype("<f8").view(np.uint8)
    out[_QHEADER.size + 8 * channels : _QHEADER.size + 9 * channels] = zero
    data = out[_QHEADER.size + 9 * channels :].reshape(rows, cols)
    values = arr.reshape(rows, cols)
    for r, c, ch in _blocks(rows, cols, channels):
        scaled = values[r, c].astype(np.float64) / scale[ch] + zero[ch]
        data[r, c] = np.clip(np.rint(scaled), 0, 255)
    return out


def _dequantise(payload: bytes | np.ndarray, out: np.ndarray, axis: int | None, name: str) -> None:
    """Fill ``out`` from a quantised payload whose total size is already checked."""
    rows, cols, channels = _layout(out.shape, axis)
    version, per_channel, got_axis, got_channels = _QHEADER.unpack_from(payload, 0)
    if version != _QVERSION:
        raise _fail(name, f"quantisation header version {version} is not supported (expected {_QVERSION})")
    expected = (axis is not None, axis or 0, channels)
    if (per_channel, got_axis, got_channels) != expected:
        raise _fail(
            name,
            f"quantisation header says per_channel={per_channel}, axis={got_axis}, channels={got_channels}; "
            f"shape {_fmt(out.shape)} needs per_channel={int(expected[0])}, axis={expected[1]}, channels={channels}",
        )
    scale = np.frombuffer(payload, "<f8", channels, _QHEADER.size).astype(np.float64)
    zero = np.frombuffer(payload, np.uint8, channels, _QHEADER.size + 8 * channels).astype(np.float64)
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise _fail(name, "quantisation scales must be finite and positive")
    data = np.frombuffer(payload, np.uint8, rows * cols, _QHEADER.size + 9 * channels).reshape(rows, cols)
    limit = float(float_info(out.dtype).max)
    with np.errstate(over="ignore"):
        clip = bool((np.maximum(zero, 255 - zero) * scale > limit).any())
    target = out.reshape(rows, cols)
    for r, c, ch in _blocks(rows, cols, channels):
        with np.errstate(over="ignore"):
            values = (data[r, c] - zero[ch]) * scale[ch]
        if clip:  # the step past the range's edge may leave the dtype's range; the edge is closer
            np.clip(values, -limit, limit, out=values)
        target[r, c] = values


def _layout(shape: tuple[int, ...], axis: int | None) -> tuple[int, int, int]:
    """(rows, columns, channels) of the 2-D view where row r belongs to channel r % channels."""
    if axis is None:
        return 1, math.prod(shape), 1
    return math.prod(shape[: axis + 1]), math.prod(shape[axis + 1 :]), shape[axis]


def _blocks(rows: int, cols: int, channels: int) -> Iterator[tuple[slice, slice, tuple]]:
    """Blocks of about _BLOCK elements: (row slice, column slice, channel index for broadcasting)."""
    if rows == 0 or cols == 0:
        return
    if cols >= _BLOCK:
        for r in range(rows):
            for c in range(0, cols, _BLOCK):
                yield slice(r, r + 1), slice(c, c + _BLOCK), (r % channels,)
    else:
        step = _BLOCK // cols
        for r in range(0, rows, step):
            ch = np.arange(r, min(r + step, rows)) % channels
            yield slice(r, r + step), slice(None), (ch[:, None],)


def _shuffle(flat: np.ndarray, itemsize: int) -> np.ndarray:
    """Byte k of every element grouped together (lane by lane: faster than a transpose)."""
    elements = flat.reshape(-1, itemsize)
    out = np.empty((itemsize, elements.shape[0]), np.uint8)
    for k in range(itemsize):
        out[k] = elements[:, k]
    return out.reshape(-1)


def _unshuffle(data: bytes, itemsize: int) -> np.ndarray:
    lanes = np.frombuffer(data, np.uint8).reshape(itemsize, -1)
    out = np.empty((lanes.shape[1], itemsize), np.uint8)
    for k in range(itemsize):
        out[:, k] = lanes[k]
    return out.reshape(-1)


# -- zstd ----------------------------------------------------------------------------

_local = threading.local()  # zstd contexts are not thread-safe; one set per thread


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = _local.__dict__.setdefault("compressors", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    return _local.decompressor


def _inflate(buf: memoryview, size: int, name: str, spec: str) -> bytes:
    """Decompress one zstd frame that must declare exactly ``size`` bytes of content.

    The declared size is checked before decompressing, and zstd fails a frame whose
    blocks produce more than it declared, so a bomb never gets a bigger buffer.
    """
    if bytes(buf[:4]) != _ZSTD_MAGIC:
        raise _fail(name, f"codec {spec} payload is not a zstd frame")
    try:
        declared = zstandard.get_frame_parameters(buf).content_size
    except zstandard.ZstdError as exc:
        raise _fail(name, f"bad zstd frame header: {exc}") from None
    if declared == zstandard.CONTENTSIZE_UNKNOWN:
        raise _fail(name, "zstd frame does not declare its content size")
    if declared != size:
        raise _fail(name, f"zstd frame declares {declared} bytes of content, expected {size}")
    try:
        return _decompressor().decompress(buf, max_output_size=size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise _fail(name, f"corrupt zstd frame: {exc}") from None


# -- checks and helpers --------------------------------------------------------------


def _canonical(array: np.ndarray, name: str) -> np.ndarray:
    """Row-major little-endian array of a supported dtype (a copy only when needed)."""
    array = np.asarray(array)
    try:
        dtype = _supported(array.dtype)
    except WireError:
        raise _fail(name, f"cannot encode dtype {array.dtype}; supported: {', '.join(supported_names())}") from None
    return array.astype(_little(dtype), order="C", copy=False)


def _declared_dtype(dtype: np.dtype, name: str) -> np.dtype:
    try:
        return _supported(np.dtype(dtype))
    except (TypeError, ValueError, WireError):
        raise _fail(name, f"unsupported dtype {dtype!r}; supported: {', '.join(supported_names())}") from None


@functools.lru_cache(maxsize=64)
def _supported(dtype: np.dtype) -> np.dtype:
    """The native dtype splitpoint carries for ``dtype`` (numpy's dtype.name is slow)."""
    return numpy_dtype(dtype_name(dtype))


def _declared_shape(shape: Sequence[int], name: str) -> tuple[int, ...]:
    try:
        dims = tuple(shape)
        if any(isinstance(d, (bool, np.bool_)) for d in dims):
            raise TypeError("a bool is not a dimension")
        dims = tuple(operator.index(d) for d in dims)
    except TypeError:
        raise _fail(name, f"shape must be a sequence of integers, got {_shown(shape)}") from None
    if len(dims) > _MAX_DIMS:
        raise _fail(name, f"shape has {len(dims)} dimensions; at most {_MAX_DIMS} are supported")
    if any(d < 0 or d > _INT64_MAX for d in dims):
        raise _fail(name, f"shape {_fmt(dims)} has a dimension outside 0..2**63-1")
    return dims


def _codec_param(params: Mapping[str, str | int | bool], name: str) -> Codec:
    try:
        value = params.get(PARAM)
    except AttributeError:
        raise _fail(name, f"tensor parameters must be a mapping, got {type(params).__name__}") from None
    if value is None:
        return Codec(None, "raw", None)
    if not isinstance(value, str):
        raise _fail(name, f"parameter {PARAM} must be a string, got {type(value).__name__} {_shown(value)}")
    try:
        return parse(value)
    except CodecError as exc:
        raise _fail(name, str(exc)) from None


def _payload_itemsize(lossy: str | None, dtype: np.dtype) -> int:
    return {None: dtype.itemsize, "fp16": 2}.get(lossy, 1)


def _channel_axis(shape: tuple[int, ...]) -> int:
    return 1 if len(shape) >= 2 else 0


def _byte_view(data: bytes | memoryview, name: str) -> memoryview:
    try:
        view = memoryview(data)
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    except TypeError:
        raise _fail(name, f"data must be a contiguous bytes-like object, got {type(data).__name__}") from None


def _little(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("<")


def _described(dtype: np.dtype, shape: Sequence[int]) -> str:
    return f"{to_oip(dtype)} shape {_fmt(shape)}"


def _over(max_bytes: int) -> str:
    return f"over the {max_bytes}-byte limit"


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _shown(value: object, limit: int = 60) -> str:
    """repr of a value from the wire, cut short so a hostile one cannot flood the logs."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _fail(name: str, problem: str) -> CodecError:
    return CodecError(f"tensor {_shown(str(name), limit=200)}: {problem}")


def _bad_spec(spec: str) -> CodecError:
    return CodecError(
        f"unknown codec {_shown(spec)}; valid: {', '.join(available())} "
        f"(zstd stages take an optional :LEVEL from 1 to {MAX_LEVEL}, default {defaults.ZSTD_LEVEL})"
    )
