"""The tolerance rule of splitpoint.compare: scaled to the output's magnitude and dtype, integers exact."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitpoint.compare import RULE, array_difference, difference, tolerance


def test_the_bound_grows_with_the_coarseness_of_the_dtype():
    bounds = [tolerance(np.dtype(d)) for d in ("float64", "float32", "float16", ml_dtypes.bfloat16)]
    assert bounds == sorted(bounds) and 5e-5 < tolerance(np.dtype("float32")) < 7e-5
    assert tolerance(np.dtype("int64")) == tolerance(np.dtype("bool")) == 0.0


@given(scale=st.floats(1e-3, 1e4), share=st.floats(0.0, 0.9), dtype=st.sampled_from(["float32", "float64", "float16"]))
def test_a_difference_is_judged_relative_to_the_largest_magnitude(scale, share, dtype):
    ref = (np.linspace(-1.0, 1.0, 64) * scale).astype(dtype)
    bound = tolerance(ref.dtype) * float(np.abs(ref.astype(np.float64)).max())
    bump = np.zeros(64)
    bump[7] = share * bound
    within = (ref.astype(np.float64) + bump).astype(dtype)
    assert array_difference(ref, within).ok  # rounding to the dtype may move it, never past the bound
    bump[7] = 3 * bound
    beyond = (ref.astype(np.float64) + bump).astype(dtype)
    d = array_difference(ref, beyond)
    assert not d.ok and d.ratio > 1 and d.tolerance == tolerance(ref.dtype)


def test_integers_must_be_equal_and_the_message_names_the_rule():
    ids = np.arange(10)
    assert array_difference(ids, ids.copy()).exact
    d = array_difference(ids, ids + (ids == 3))
    assert not d.ok and "outputs not equal" in d.describe() and RULE in d.describe()


def test_the_worst_output_decides_and_is_described():
    ref = {"a": np.ones(4, np.float32), "b": np.ones(4, np.float16)}
    got = {"a": ref["a"] + np.float32(1e-5), "b": ref["b"] + np.float16(0.0625)}  # a within, b 8x its bound
    d = difference(ref, got)
    assert not d.ok and d.tolerance == tolerance(np.dtype("float16")) and d.ratio == pytest.approx(0.0625 / d.tolerance)
    assert "beyond the rule" in d.describe()
    assert difference(ref, {"a": got["a"]}).ratio == float("inf")  # a missing output
