"""Fuzzing the tensor decoder: whatever arrives, one CodecError or a sound array, within memory.

tests/test_codec.py checks each malformation on its own; here hypothesis builds
hostile tensors from a grammar of what a peer can send (dtype, shape, codec
parameter, quantisation header with NaN/inf/huge/negative scales, zstd frames
whose declared size is right but whose content is not, RLE bombs) and checks,
for every one, that decode

- raises CodecError naming the tensor, or returns an owned array of the
  declared dtype and shape (int8 payloads never decode to inf or NaN);
- never allocates more than a small multiple of its ``max_bytes`` limit
  (measured with tracemalloc, which sees numpy's and zstandard's buffers);
- never takes long.

Run as a script, this file is also a coverage-guided atheris harness over the
same decoder (``python tests/test_fuzz_decoder.py -max_total_time=60``);
``test_atheris_finds_nothing`` runs it for a few seconds.
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import time
import tracemalloc
import warnings

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitpoint.codec import PARAM, CodecError, available, decode
from splitpoint.dtypes import numpy_dtype, supported_names

DTYPES = [numpy_dtype(n) for n in supported_names()]
SPECS = available() + ["zstd:22", "shuffle-zstd:1", "int8+zstd:0", "zstd:", "+zstd", "raw:3", "int8+int8", ""]
QHEADER = struct.Struct("<BBHI")
LIMIT = 1 << 16  # max_bytes for the fuzzed calls: small, so a leak past it shows
MAGIC = struct.pack("<I", zstandard.MAGIC_NUMBER)
SLOW_S = 2.0  # far above any honest decode of LIMIT bytes, far below a hang

SCALES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 5e-324, 1e-300, 1e300, 1.7976931348623157e308, math.nan, math.inf, -math.inf]),
)


def _dims(draw) -> list[int]:
    """Hostile shapes: negative, past int32, past int64, past numpy's index range."""
    return draw(st.lists(
        st.one_of(st.integers(-3, 40), st.integers(2**31 - 2, 2**31 + 2), st.integers(2**62, 2**64), st.integers(-(2**63), 0)),
        max_size=6,
    ))


def _quantised(draw, shape: list[int], per_channel: bool) -> bytes:
    """A quantisation header (mostly consistent with ``shape``), hostile scales, random zero points and data."""
    channels = shape[1 if len(shape) >= 2 else 0] if per_channel and shape else 1
    version = draw(st.sampled_from([1] * 8 + [0, 2]))
    axis = 1 if per_channel and len(shape) >= 2 else 0
    axis, claimed = draw(st.sampled_from([(axis, channels)] * 8 + [(axis + 1, channels), (axis, channels + 1), (3, 2**32 - 1)]))
    scales = draw(st.lists(st.one_of(st.floats(1e-6, 1e6), SCALES), min_size=channels, max_size=channels))
    zeros = draw(st.binary(min_size=channels, max_size=channels))
    data = draw(st.binary(min_size=math.prod(shape), max_size=math.prod(shape)))
    return QHEADER.pack(version, per_channel, axis, claimed) + struct.pack(f"<{channels}d", *scales) + zeros + data


def _rle_bomb(declared: int, blocks: int) -> bytes:
    """A zstd frame declaring ``declared`` bytes whose RLE blocks expand to 128 KiB each."""
    header = bytes([0xC0, 0x38]) + struct.pack("<Q", declared)
    rle = [struct.pack("<I", ((1 << 17) << 3) | (1 << 1) | (i == blocks - 1))[:3] + b"\x07" for i in range(blocks)]
    return MAGIC + header + b"".join(rle)


def _coherent(draw) -> tuple[bytes, dict, np.dtype, list[int]]:
    """A tensor whose spec, sizes and framing agree, with hostile content and, sometimes, one defect."""
    spec = draw(st.sampled_from(available()))
    lossy = spec.split("+")[0] if spec.split("+")[0] in ("fp16", "int8", "int8-channel") else None
    floats = [d for d in DTYPES if d.kind == "f" or d.name == "bfloat16"]
    dtype = draw(st.sampled_from(floats if lossy else DTYPES))
    shape = draw(st.lists(st.integers(0 if lossy is None else 1, 12), min_size=int(lossy == "int8-channel"), max_size=4))
    count = math.prod(shape)
    if lossy in ("int8", "int8-channel"):
        payload = _quantised(draw, shape, lossy == "int8-channel")
    else:
        size = count * (2 if lossy == "fp16" else dtype.itemsize)
        payload = draw(st.binary(min_size=size, max_size=size))
    defect = draw(st.sampled_from([None] * 6 + ["truncate", "extend", "flip"]))
    if defect == "truncate" and payload:
        payload = payload[: draw(st.integers(0, len(payload) - 1))]
    elif defect == "extend":
        payload += draw(st.binary(min_size=1, max_size=9))
    elif defect == "flip" and payload:
        i = draw(st.integers(0, len(payload) - 1))
        payload = payload[:i] + bytes([payload[i] ^ draw(st.integers(1, 255))]) + payload[i + 1 :]
    if "zstd" in spec:
        payload = zstandard.ZstdCompressor(write_content_size=True).compress(payload)
    return payload, {PARAM: spec}, dtype, shape


def _chaotic(draw) -> tuple[bytes, dict, np.dtype, list[int]]:
    """Anything: junk specs and parameter types, hostile shapes, random bytes, quantisation headers, bombs."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = _dims(draw)
    spec = draw(st.one_of(st.sampled_from(SPECS), st.text(max_size=12)))
    params = draw(st.sampled_from([{PARAM: spec}, {PARAM: spec}, {}, {PARAM: 3}, {PARAM: True}, {PARAM: -1.5}]))
    body = draw(st.sampled_from(["random", "quantised", "bomb"]))
    if body == "bomb":
        declared = draw(st.sampled_from([abs(math.prod(shape)) * dtype.itemsize % 2**64, 1 << 30, 2**64 - 1]))
        return _rle_bomb(declared, 64), params, dtype, shape
    if body == "quantised" and all(0 <= d <= 40 for d in shape) and math.prod(shape) <= 4096:
        payload = _quantised(draw, shape, per_channel=draw(st.booleans()))
    else:
        payload = draw(st.binary(max_size=512))
    if draw(st.booleans()):
        payload = zstandard.ZstdCompressor(write_content_size=True).compress(payload)
    return payload, params, dtype, shape


@st.composite
def hostile_tensors(draw) -> tuple[bytes, dict, np.dtype, list[int]]:
    """(data, params, dtype, shape) as a confused or malicious peer could send them."""
    return _coherent(draw) if draw(st.integers(0, 3)) else _chaotic(draw)


def decode_measured(data: bytes, params: dict, dtype: np.dtype, shape: list[int]) -> tuple[object, int, float]:
    """decode's result (an array or the CodecError), its peak traced allocation and its time."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning is noise in the worker's log for every such tensor
            result: object = decode(data, params, dtype=dtype, shape=shape, name="fuzzed", max_bytes=LIMIT)
    except CodecError as e:
        result = e
    finally:
        took = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak, took


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hostile_tensors())
def test_hostile_tensors_get_one_codec_error_or_a_sound_array_within_memory(case):
    data, params, dtype, shape = case
    result, peak, took = decode_measured(data, params, dtype, shape)
    if isinstance(result, CodecError):
        assert str(result).startswith("tensor 'fuzzed': "), result
    else:
        assert isinstance(result, np.ndarray) and result.dtype == dtype and list(result.shape) == shape
        assert result.flags.owndata and result.flags.writeable and result.nbytes <= LIMIT
        if str(params.get(PARAM, "")).startswith("int8"):
            assert np.isfinite(result.astype(np.float64)).all(), "finite scales must decode to finite values"
    # decompressed payload, unshuffled copy and output: each at most LIMIT; the input is the caller's
    assert peak <= 3 * LIMIT + 2 * len(data) + (256 << 10), f"peak {peak} bytes for {len(data)} bytes in"
    assert took < SLOW_S


@pytest.mark.parametrize("declared", [LIMIT, 1 << 30, 2**64 - 2])
def test_rle_bombs_never_inflate_past_the_limit(declared):
    """8 MiB of content in 4 KiB of frame: refused before or while inflating, never held."""
    shape = [declared // 4] if declared <= LIMIT else [LIMIT // 4]
    result, peak, took = decode_measured(_rle_bomb(declared, 64), {PARAM: "zstd"}, np.dtype(np.float32), shape)
    assert isinstance(result, CodecError) and "zstd" in str(result)
    assert peak <= 2 * LIMIT + (256 << 10) and took < SLOW_S


@pytest.mark.parametrize("scale", [math.nan, math.inf, -math.inf, 0.0, -2.0])
@pytest.mark.parametrize("spec", ["int8", "int8-channel", "int8+zstd"])
def test_non_finite_or_non_positive_quantisation_scales_are_refused(spec, scale):
    shape = [2, 3, 4]
    per_channel = spec == "int8-channel"
    channels = 3 if per_channel else 1
    payload = QHEADER.pack(1, per_channel, 1 if per_channel else 0, channels) + struct.pack("<d", scale) * channels
    payload += b"\x80" * channels + b"\x01" * 24
    if "zstd" in spec:
        payload = zstandard.ZstdCompressor(write_content_size=True).compress(payload)
    with pytest.raises(CodecError, match="tensor 'q': quantisation scales must be finite and positive"):
        decode(payload, {PARAM: spec}, dtype=np.float32, shape=shape, name="q")


def test_huge_scales_decode_to_the_largest_finite_value_not_infinity():
    payload = QHEADER.pack(1, 0, 0, 1) + struct.pack("<d", 1.7976931348623157e308) + b"\x00" + bytes([0, 1, 255])
    out = decode(payload, {PARAM: "int8"}, dtype=np.float16, shape=[3], name="q")
    assert out.tolist() == [0.0, 65504.0, 65504.0]


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d.kind == "f" or d.name == "bfloat16"], ids=str)
def test_every_fp16_bit_pattern_decodes_quietly_keeping_nan_and_inf(dtype):
    """Regression: NaN payloads cast to bfloat16 raised a RuntimeWarning on every such tensor."""
    bits = np.arange(1 << 16, dtype=np.uint16).view("<f2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = decode(bits.tobytes(), {PARAM: "fp16"}, dtype=dtype, shape=[bits.size], name="h")
    with np.errstate(invalid="ignore"):
        out, want = out.astype(np.float32), bits.astype(np.float32)
    assert np.array_equal(np.isnan(out), np.isnan(want)) and np.array_equal(np.isinf(out), np.isinf(want))


def test_atheris_finds_nothing(tmp_path):
    """A few seconds of coverage-guided fuzzing of decode; a crash leaves its input in tmp_path."""
    pytest.importorskip("atheris")
    run = subprocess.run(
        [sys.executable, __file__, "-max_total_time=12", "-rss_limit_mb=1024", "-timeout=5",
         f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
        capture_output=True, text=True, timeout=120,
    )
    report = run.stdout[-2000:] + run.stderr[-3000:]
    assert run.returncode == 0, report
    assert "Done" in run.stderr and "stat::number_of_executed_units" in run.stderr, report
    assert not list(tmp_path.iterdir()), report


def _atheris_target(data: bytes) -> None:
    """One decode of a tensor spelled by the fuzzer's bytes; anything but CodecError is a crash."""
    import atheris

    fdp = atheris.FuzzedDataProvider(data)
    dtype = DTYPES[fdp.ConsumeIntInRange(0, len(DTYPES) - 1)]
    spec = SPECS[fdp.ConsumeIntInRange(0, len(SPECS) - 1)]
    shape = [fdp.ConsumeIntInRange(0, 9) if fdp.ConsumeBool() else fdp.ConsumeInt(8) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    wrap = fdp.ConsumeBool()
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    if wrap:  # lets the fuzzer reach the checks behind a valid zstd frame
        payload = zstandard.ZstdCompressor(write_content_size=True).compress(payload)
    try:
        out = decode(payload, {PARAM: spec}, dtype=dtype, shape=shape, name="fuzzed", max_bytes=LIMIT)
    except CodecError:
        return
    if out.dtype != dtype or list(out.shape) != shape:
        raise AssertionError(f"decoded {out.dtype} {out.shape}, declared {dtype} {shape}")


if __name__ == "__main__":
    import atheris

    import splitpoint.codec

    for value in vars(splitpoint.codec).values():  # coverage feedback from the decoder's own code
        if callable(value) and getattr(value, "__module__", None) == "splitpoint.codec" and hasattr(value, "__code__"):
            atheris.instrument_func(value)
    atheris.Setup(sys.argv, _atheris_target)
    atheris.Fuzz()
