"""Tensor codec: bit-exact lossless round-trips, lossy error bounds, and a decoder
that answers anything malformed with exactly one CodecError naming the tensor."""

from __future__ import annotations

import struct
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from splitpoint import codec
from splitpoint.codec import PARAM, CodecError, decode, encode, parse
from splitpoint.dtypes import numpy_dtype, supported_names

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [numpy_dtype(n) for n in supported_names()]
FLOATS = [d for d in DTYPES if d.name in ("float16", "float32", "float64", "bfloat16")]
LOSSLESS = ["raw", "zstd", "zstd:1", "shuffle-zstd", "shuffle-zstd:7"]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)
MAGIC = struct.pack("<I", zstandard.MAGIC_NUMBER)


def bit_arrays(dtype: np.dtype, shape) -> st.SearchStrategy[np.ndarray]:
    """Every bit pattern of ``dtype``: NaN payloads, -0.0, infinities, subnormals."""
    if dtype.kind == "b":
        return hnp.arrays(dtype, shape)
    return hnp.arrays(np.dtype(f"u{dtype.itemsize}"), shape).map(lambda a: a.view(dtype))


def swapped(a: np.ndarray) -> np.ndarray:
    if a.dtype.itemsize == 1 or a.dtype.name == "bfloat16":  # ml_dtypes has no byte-swapped dtypes
        return a
    return a.byteswap().view(a.dtype.newbyteorder())


VIEWS = {
    "as-is": lambda a: a,
    "transposed": lambda a: a.T,
    "reversed": lambda a: a[::-1] if a.ndim else a,
    "strided": lambda a: a[::2] if a.ndim else a,
    "fortran": lambda a: np.array(a, order="F"),
    "byteswapped": swapped,
}


def roundtrip(array: np.ndarray, spec: str) -> np.ndarray:
    enc = encode(array, spec, name="t")
    return decode(enc.data, enc.params, dtype=array.dtype, shape=array.shape, name="t")


def assert_owned(out: np.ndarray, dtype: np.dtype, shape: tuple) -> None:
    assert out.dtype == dtype and out.shape == shape
    assert out.flags.writeable and out.flags.owndata and out.flags.c_contiguous


# -- lossless --------------------------------------------------------------------------


@FAST
@given(data=st.data(), dtype=st.sampled_from(DTYPES), spec=st.sampled_from(LOSSLESS), view=st.sampled_from(list(VIEWS)))
def test_lossless_roundtrip_is_bit_exact(data, dtype, spec, view):
    array = VIEWS[view](data.draw(bit_arrays(dtype, SHAPES)))
    expected = np.array(array, dtype=dtype, order="C")  # native, row-major, same bits
    enc = encode(array, spec, name="t")
    if spec == "raw":
        assert enc.params == {} and enc.data == expected.astype(dtype.newbyteorder("<")).tobytes()
    out = decode(enc.data, enc.params, dtype=array.dtype, shape=array.shape, name="t")
    assert_owned(out, dtype, array.shape)
    assert out.tobytes() == expected.tobytes()


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("spec", LOSSLESS)
def test_special_float_values_survive(dtype, spec):
    bits = np.dtype(f"u{dtype.itemsize}")
    ones, inf = int(np.iinfo(bits).max), int(np.array(np.inf, dtype).view(bits))
    nans = np.array([ones, ones >> 1, inf + 1, inf + 0x15], bits).view(dtype)  # payloads, signalling
    specials = np.array([np.nan, -0.0, np.inf, -np.inf, 0.0, 1.0], np.float64).astype(dtype)
    array = np.concatenate([specials, nans])
    assert roundtrip(array, spec).tobytes() == array.tobytes()


@pytest.mark.parametrize("spec", LOSSLESS + ["fp16+zstd", "int8+shuffle-zstd", "int8-channel"])
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,)])
def test_scalars_and_empty_tensors(spec, shape):
    array = np.full(shape, 2.5, np.float32)
    out = roundtrip(array, spec)
    assert_owned(out, array.dtype, shape)
    np.testing.assert_array_equal(out, array)


def test_shuffle_degrades_to_zstd_for_one_byte_elements_and_params_say_so():
    for array in (np.arange(100, dtype=np.uint8), np.ones(10, bool), np.arange(5, dtype=np.int8)):
        assert encode(array, "shuffle-zstd:4").params == {PARAM: "zstd:4"}


def test_lossy_stages_skip_integers_and_say_only_what_was_done():
    ints = np.arange(12, dtype=np.int64).reshape(3, 4)
    assert encode(ints, "int8+zstd:5").params == {PARAM: "zstd:5"}
    assert encode(ints, "fp16").params == {}
    assert encode(np.ones(3, np.float16), "fp16+shuffle-zstd").params == {PARAM: "shuffle-zstd:3"}
    assert encode(np.float32(1.0), "int8-channel").params == {PARAM: "int8"}
    assert encode(np.zeros((2, 0), np.float32), "int8+zstd").params == {PARAM: "zstd:3"}
    np.testing.assert_array_equal(roundtrip(ints, "int8-channel+shuffle-zstd"), ints)


def test_byte_shuffle_groups_bytes_by_position():
    array = np.array([0x04030201, 0x08070605], "<u4")
    frame = encode(array, "shuffle-zstd").data
    assert zstandard.ZstdDecompressor().decompress(frame) == bytes([1, 5, 2, 6, 3, 7, 4, 8])


def test_decode_accepts_bytearray_and_memoryviews():
    array = np.arange(6, dtype=np.float32)
    enc = encode(array, "zstd")
    for data in (bytearray(enc.data), memoryview(enc.data)):
        np.testing.assert_array_equal(decode(data, enc.params, dtype=np.float32, shape=(6,)), array)
    raw = memoryview(array)  # a float-formatted view counts bytes, not elements
    np.testing.assert_array_equal(decode(raw, {}, dtype=np.float32, shape=(6,)), array)


def test_threads_share_nothing():
    arrays = [np.random.default_rng(i).standard_normal((4, 64)).astype(np.float32) for i in range(32)]

    def work(a):
        return roundtrip(a, "shuffle-zstd:2").tobytes() == a.tobytes()

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, arrays * 4))


# -- lossy -----------------------------------------------------------------------------


@FAST
@given(
    array=st.one_of(
        hnp.arrays(np.float32, SHAPES, elements=st.floats(-65504, 65504, width=32)),
        hnp.arrays(np.float64, SHAPES, elements=st.floats(-65504, 65504)),
    ),
    spec=st.sampled_from(["fp16", "fp16+zstd", "fp16+shuffle-zstd"]),
)
def test_fp16_relative_error_per_element(array, spec):
    out = roundtrip(array, spec)
    assert_owned(out, array.dtype, array.shape)
    x = array.astype(np.float64)
    assert (np.abs(out - x) <= np.abs(x) * 2.0**-11 + 2.0**-25).all()  # normals, then subnormals


@pytest.mark.parametrize("value", [65520.0, -1e6, 1e300])
def test_fp16_refuses_overflow_naming_the_tensor(value):
    array = np.array([1.0, value], np.float64)
    with pytest.raises(CodecError, match=r"tensor 'act': value .* index \[1\] is beyond the float16 range"):
        encode(array, "fp16+zstd", name="act")


def test_fp16_keeps_infinities_and_nan_that_were_already_there():
    out = roundtrip(np.array([np.inf, -np.inf, np.nan, 65519.0], np.float32), "fp16")
    assert np.isposinf(out[0]) and np.isneginf(out[1]) and np.isnan(out[2]) and out[3] == 65504


def finite_floats(dtype: np.dtype) -> st.SearchStrategy[np.ndarray]:
    if dtype.name == "bfloat16":  # below bf16's max so the cast from float32 stays finite
        limit = float(np.float32(3.3e38))
        elements = st.floats(-limit, limit, width=32)
        return hnp.arrays(np.float32, SHAPES, elements=elements).map(lambda a: a.astype(dtype))
    elements = st.floats(allow_nan=False, allow_infinity=False, width=8 * dtype.itemsize)
    return hnp.arrays(dtype, SHAPES, elements=elements)


def max_int8_error(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """scale/2 per element plus the output dtype's own rounding, with scale from min/max and 0."""
    lo, hi = np.minimum(x.min(axis=-1, keepdims=True), 0), np.maximum(x.max(axis=-1, keepdims=True), 0)
    scale = hi / 255 - lo / 255
    finfo = np.finfo(np.float32) if dtype.name == "bfloat16" else np.finfo(dtype)
    eps = 2.0**-7 if dtype.name == "bfloat16" else float(finfo.eps)
    tiny = 2.0**-133 if dtype.name == "bfloat16" else float(finfo.smallest_subnormal)
    with np.errstate(over="ignore"):  # an infinite bound for float64 extremes is still a bound
        return scale / 2 * (1 + 1e-9) + eps * (np.abs(x) + scale) + tiny


@FAST
@given(data=st.data(), dtype=st.sampled_from(FLOATS), entropy=st.sampled_from(["", "+zstd", "+shuffle-zstd"]))
def test_int8_per_tensor_error_is_at_most_half_a_step(data, dtype, entropy):
    array = data.draw(finite_floats(dtype))
    out = roundtrip(array, "int8" + entropy)
    assert_owned(out, dtype, array.shape)
    if array.size:
        x, y = array.astype(np.float64).reshape(1, -1), out.astype(np.float64).reshape(1, -1)
        assert (np.abs(y - x) <= max_int8_error(x, dtype)).all()
        assert (y[x == 0] == 0).all()  # zero is always on the grid


@FAST
@given(data=st.data(), dtype=st.sampled_from(FLOATS))
def test_int8_per_channel_error_is_at_most_half_its_channels_step(data, dtype):
    array = data.draw(finite_floats(dtype))
    out = roundtrip(array, "int8-channel+zstd")
    assert_owned(out, dtype, array.shape)
    if array.size and array.ndim:
        axis = 1 if array.ndim >= 2 else 0
        per_channel = lambda a: np.moveaxis(a.astype(np.float64), axis, 0).reshape(a.shape[axis], -1)  # noqa: E731
        x, y = per_channel(array), per_channel(out)
        assert (np.abs(y - x) <= max_int8_error(x, dtype)).all()


def test_int8_channels_get_their_own_scale():
    array = np.stack([np.linspace(0, 1, 64), np.linspace(-1000, 1000, 64)]).astype(np.float32)[None]
    per_tensor = np.abs(roundtrip(array, "int8") - array)[0, 0].max()
    per_channel = np.abs(roundtrip(array, "int8-channel") - array)[0, 0].max()
    assert per_channel <= 1 / 255 / 2 + 1e-6 < per_tensor


@pytest.mark.parametrize(
    "values",
    [[0.0, 0.0, 0.0], [-0.0, 0.0, -0.0], [7.5, 7.5, 7.5], [-3.0, -3.0, -3.0], [1e-45, 1e-45, 0.0]],
    ids=["zeros", "signed-zeros", "constant", "negative-constant", "subnormal"],
)
@pytest.mark.parametrize("spec", ["int8", "int8-channel"])
def test_int8_degenerate_ranges(values, spec):
    array = np.array(values, np.float32)
    np.testing.assert_allclose(roundtrip(array, spec), array, rtol=1e-6, atol=1e-45)


def test_int8_extremes_do_not_overflow_to_infinity():
    for dtype in (np.float16, np.float32, np.float64):
        big = float(np.finfo(dtype).max)
        out = roundtrip(np.array([-big, big, 0], dtype), "int8")
        assert np.isfinite(out).all() and out[2] == 0
        assert np.abs(out[:2].astype(np.float64) - [-big, big]).max() <= big / 255 * 1.001


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("spec", ["int8", "int8-channel+zstd"])
def test_int8_refuses_non_finite_input_naming_the_tensor(bad, spec):
    with pytest.raises(CodecError, match=r"tensor 'feat': int8 quantisation needs finite values"):
        encode(np.array([[1.0, bad], [2.0, 3.0]], np.float32), spec, name="feat")


# -- decoder hostility -----------------------------------------------------------------

ALL_SPECS = codec.available() + ["zstd:22", "int8-channel+shuffle-zstd:1"]
PARAM_VALUES = st.one_of(
    st.none(), st.sampled_from(ALL_SPECS), st.text(max_size=20), st.integers(), st.booleans(), st.binary(max_size=8)
)


def decodes_or_codec_error(data, params, dtype, shape, **kwargs) -> None:
    try:
        out = decode(data, params, dtype=dtype, shape=shape, name="x", **kwargs)
    except CodecError as exc:
        assert str(exc).startswith("tensor 'x': ")
    else:
        assert_owned(out, numpy_dtype(np.dtype(dtype).name), tuple(shape))


@FAST
@given(
    data=st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: MAGIC + b)),
    value=PARAM_VALUES,
    dtype=st.sampled_from(DTYPES),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
)
def test_random_bytes_raise_only_codec_errors(data, value, dtype, shape):
    params = {} if value is None else {PARAM: value}
    decodes_or_codec_error(data, params, dtype, shape, max_bytes=1 << 16)


@FAST
@given(
    shape=st.lists(st.one_of(st.integers(-2, 4), st.integers(-(2**64), 2**64)), max_size=6),
    value=PARAM_VALUES,
    dtype=st.sampled_from(DTYPES),
    max_bytes=st.one_of(st.just(1 << 20), st.integers(0, 2**70)),
)
def test_hostile_shapes_and_limits_raise_only_codec_errors(shape, value, dtype, max_bytes):
    params = {} if value is None else {PARAM: value}
    decodes_or_codec_error(b"\0" * 16, params, dtype, shape, max_bytes=max_bytes)


@FAST
@given(
    data=st.data(),
    dtype=st.sampled_from(DTYPES),
    spec=st.sampled_from(ALL_SPECS),
    mutation=st.sampled_from(["flip", "truncate", "extend", "params", "dtype", "shape"]),
)
def test_corrupted_payloads_raise_only_codec_errors(data, dtype, spec, mutation):
    array = data.draw(bit_arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=5)))
    if dtype.name in ("float16", "float32", "float64", "bfloat16"):
        array = np.nan_to_num(array.astype(np.float64), posinf=1.0, neginf=-1.0).clip(-6e4, 6e4).astype(dtype)
    enc = encode(array, spec)
    payload, params, shape = bytearray(enc.data), dict(enc.params), list(array.shape)
    if mutation == "flip":
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] ^= data.draw(st.integers(1, 255))
    elif mutation == "truncate":
        del payload[data.draw(st.integers(0, len(payload) - 1)) :]
    elif mutation == "extend":
        payload += data.draw(st.binary(min_size=1, max_size=16))
    elif mutation == "params":
        value = data.draw(PARAM_VALUES)
        params = {} if value is None else {PARAM: value}
    elif mutation == "dtype":
        dtype = data.draw(st.sampled_from(DTYPES))
    else:
        shape = data.draw(st.lists(st.integers(0, 6), max_size=4))
    decodes_or_codec_error(bytes(payload), params, dtype, shape, max_bytes=1 << 16)


def test_raw_length_mismatch_message():
    with pytest.raises(CodecError) as info:
        decode(b"\0" * 65532, {}, dtype=np.float32, shape=[1, 16, 32, 32], name="block.relu1")
    assert str(info.value) == "tensor 'block.relu1': expected 65536 bytes of FP32 for shape [1,16,32,32], got 65532"


@pytest.mark.parametrize(
    "shape, problem",
    [
        ([2**32, 2**32], "more elements than int64"),
        ([2**62, 2, 2], "more elements than int64"),
        ([2**63], "outside 0..2\\*\\*63-1"),
        ([0, 2**62], "too large for a numpy array, even empty"),
        ([2**62, 4, 0], "too large for a numpy array, even empty"),
        ([1] * 33, "33 dimensions; at most 32"),
        ([4, -1], "outside 0..2\\*\\*63-1"),
        ([1 << 40], "over the 1073741824-byte limit"),
        ([2.0, 3], "sequence of integers"),
        (["2"], "sequence of integers"),
        ([True, 2], "sequence of integers"),
        (None, "sequence of integers"),
    ],
)
def test_bad_shapes(shape, problem):
    with pytest.raises(CodecError, match=f"tensor 'x': .*{problem}"):
        decode(b"", {}, dtype=np.float32, shape=shape, name="x")


@pytest.mark.parametrize("dtype", ["complex64", "object", "U4", "float128-not", np.dtype([("a", "f4")])])
def test_unsupported_dtypes(dtype):
    with pytest.raises(CodecError, match="tensor 'x': unsupported dtype"):
        decode(b"", {}, dtype=dtype, shape=[0], name="x")


def test_encode_refuses_unsupported_dtypes():
    with pytest.raises(CodecError, match="tensor 'z': cannot encode dtype complex64"):
        encode(np.zeros(2, np.complex64), "zstd", name="z")


@pytest.mark.parametrize(
    "value, problem",
    [
        (True, "must be a string, got bool"),
        (3, "must be a string, got int"),
        ("lz4", "unknown codec 'lz4'; valid: raw, zstd"),
        ("zstd:99", "level must be an integer from 1 to 22"),
    ],
)
def test_bad_codec_params(value, problem):
    with pytest.raises(CodecError, match=f"tensor 'x': .*{problem}"):
        decode(b"", {PARAM: value}, dtype=np.float32, shape=[0], name="x")


@pytest.mark.parametrize("spec", ["fp16", "int8+zstd", "int8-channel"])
def test_lossy_codec_declared_on_integers_is_refused(spec):
    with pytest.raises(CodecError, match="applies only to floating tensors"):
        decode(b"\0" * 64, {PARAM: spec}, dtype=np.int32, shape=[16], name="x")


def test_bool_bytes_must_be_zero_or_one():
    with pytest.raises(CodecError, match="BOOL data holds bytes other than 0 and 1"):
        decode(b"\x00\x01\x02", {}, dtype=bool, shape=[3], name="x")


@pytest.mark.parametrize("scale", [np.nan, np.inf, -np.inf, 0.0, -1.0, -0.0])
def test_quantisation_scales_must_be_finite_and_positive(scale):
    payload = bytearray(encode(np.linspace(-1, 1, 10, dtype=np.float32), "int8").data)
    payload[8:16] = struct.pack("<d", scale)  # the first scale follows the 8-byte header
    with pytest.raises(CodecError, match="tensor 'x': quantisation scales must be finite and positive"):
        decode(bytes(payload), {PARAM: "int8"}, dtype=np.float32, shape=[10], name="x")


@pytest.mark.parametrize(
    "header, problem",
    [
        ((2, 1, 1, 3), "header version 2 is not supported"),
        ((1, 0, 0, 3), "per_channel=0"),
        ((1, 1, 0, 3), "axis=0"),
        ((1, 1, 1, 2), "channels=2"),
    ],
)
def test_quantisation_header_must_match_the_shape(header, problem):
    payload = bytearray(encode(np.ones((2, 3, 4), np.float32), "int8-channel").data)
    payload[:8] = struct.pack("<BBHI", *header)
    with pytest.raises(CodecError, match=f"tensor 'x': .*{problem}"):
        decode(bytes(payload), {PARAM: "int8-channel"}, dtype=np.float32, shape=[2, 3, 4], name="x")


def test_per_channel_payload_over_the_limit_is_refused_before_reading():
    with pytest.raises(CodecError, match="int8-channel payload .* over the 1000-byte limit"):
        decode(b"", {PARAM: "int8-channel"}, dtype=np.float32, shape=[0, 10**9], name="x", max_bytes=1000)


# -- zstd bombs --------------------------------------------------------------------------


def rle_frame(declared: int | None, blocks: int, block: int = 1 << 17) -> bytes:
    """A zstd frame of ``blocks`` RLE blocks, 4 bytes each, each ``block`` bytes once
    decompressed, whose header declares ``declared`` bytes of content (None: nothing)."""
    if declared is None:
        header = bytes([0x00, 0x38])  # no content size, window 2**17
    else:
        header = bytes([0xC0, 0x38]) + struct.pack("<Q", declared)  # 8-byte content size, window 2**17
    last = blocks - 1
    rle = [struct.pack("<I", (block << 3) | (1 << 1) | (i == last))[:3] + b"\x07" for i in range(blocks)]
    return MAGIC + header + b"".join(rle)


def assert_refused_cheaply(frame: bytes, problem: str, shape=(1000,)) -> None:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(CodecError, match=problem):
            decode(frame, {PARAM: "zstd:3"}, dtype=np.float32, shape=shape, name="x")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < len(frame) + (1 << 20)


def test_bomb_frame_is_real():
    reader = zstandard.ZstdDecompressor().stream_reader(rle_frame(1 << 30, 8192))
    assert reader.read(1 << 20) == b"\x07" * (1 << 20)


def test_zstd_bomb_declaring_a_gigabyte_is_refused_before_decompressing():
    assert_refused_cheaply(rle_frame(1 << 30, 8192), "declares 1073741824 bytes of content, expected 4000")


def test_zstd_frame_without_content_size_is_refused():
    assert_refused_cheaply(rle_frame(None, 8192), "does not declare its content size")


def test_zstd_frame_that_lies_about_its_size_cannot_grow_its_buffer():
    assert_refused_cheaply(rle_frame(4000, 8192, block=1000), "corrupt zstd frame")


def test_zstd_trailing_data_and_second_frames_are_refused():
    enc = encode(np.arange(10, dtype=np.float32), "zstd")
    for data in (enc.data + b"\0", enc.data + enc.data):
        with pytest.raises(CodecError, match="corrupt zstd frame"):
            decode(data, enc.params, dtype=np.float32, shape=[10], name="x")


def test_skippable_frames_are_refused():
    skippable = struct.pack("<II", 0x184D2A50, 4) + b"junk"
    enc = encode(np.arange(10, dtype=np.float32), "zstd")
    with pytest.raises(CodecError, match="not a zstd frame"):
        decode(skippable + enc.data, enc.params, dtype=np.float32, shape=[10], name="x")


# -- specs -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", codec.available())
def test_every_available_spec_parses_to_a_stable_canonical_form(spec):
    canonical = parse(spec).spec
    assert parse(canonical).spec == canonical and parse(parse(spec)) == parse(spec)
    assert parse(spec).lossless == (spec.split("+")[0] in ("raw", "zstd", "shuffle-zstd"))


def test_canonical_specs():
    assert parse("zstd").spec == "zstd:3"
    assert parse("fp16+zstd").spec == "fp16+zstd:3"
    assert parse("int8-channel+shuffle-zstd:7").spec == "int8-channel+shuffle-zstd:7"
    assert parse("int8").spec == "int8" and parse("raw").spec == "raw"


@pytest.mark.parametrize(
    "spec",
    ["", "ZSTD", "zstd:", "zstd:0", "zstd:23", "zstd:-1", "zstd: 3", "zstd:3.0", "zstd:\u0663", "fp16+", "fp16+raw",
     "raw+zstd", "int8+fp16", "fp16+int8+zstd", "fp16+zstd+zstd", "shuffle", " raw", "raw:3", "fp16:3", "x" * 500],
)
def test_parse_errors_name_the_spec(spec):
    with pytest.raises(CodecError, match="codec '") as info:
        parse(spec)
    assert len(str(info.value)) < 400


def test_parse_errors_list_valid_specs_and_reject_non_strings():
    with pytest.raises(CodecError, match="valid: raw, zstd, shuffle-zstd, fp16, .*int8-channel"):
        parse("gzip")
    with pytest.raises(CodecError, match="must be a string"):
        parse(3)  # type: ignore[arg-type]


def test_codec_objects_validate_their_stages():
    with pytest.raises(CodecError):
        codec.Codec("fp8", "zstd", 3)
    with pytest.raises(CodecError):
        codec.Codec(None, "zstd", None)
    assert codec.Codec("fp16", "zstd", 3).encode(np.ones(2, np.float32)).params == {PARAM: "fp16+zstd:3"}



def test_raw_decode_without_copy_is_a_read_only_view_of_the_message():
    """The worker reads raw inputs in place (onnxruntime only reads them); everything else still decodes to a copy."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    data = b"\x07" + encode(x).data.tobytes()  # off by one byte, as a tensor inside a message usually is
    view = decode(memoryview(data)[1:], {}, dtype=np.float32, shape=(3, 4), copy=False)
    np.testing.assert_array_equal(view, x)
    assert np.shares_memory(view, np.frombuffer(data, np.uint8)) and not view.flags.writeable
    bools = encode(np.array([True, False])).data.tobytes()
    assert decode(bools, {}, dtype=np.bool_, shape=(2,), copy=False).flags.owndata  # bools are checked, so copied
    with pytest.raises(CodecError, match="BOOL"):
        decode(b"\x02\x00", {}, dtype=np.bool_, shape=(2,), copy=False)
    packed = encode(x, "zstd")
    assert decode(packed.data, packed.params, dtype=np.float32, shape=(3, 4), copy=False).flags.writeable
