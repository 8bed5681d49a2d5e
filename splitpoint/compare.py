"""How close two sets of outputs are: the one rule for verification, the demo and tests.

Two correct runtimes do not compute a float model bit for bit alike: PyTorch
and onnxruntime, a fused graph and an unfused one, a batch of three and three
batches of one, or one runtime on two CPUs (AVX2 against AVX-512 kernels,
another summation order) round differently. The differences are tens to a
hundred units of rounding error relative to the output's magnitude; a wrong
program (a weight changed, an op dropped) is off by more.

The rule, for every output:

- integer and bool outputs must be equal;
- a floating output agrees when it is bit-exact, or when
  ``max |actual - reference| <= tolerance(dtype) * max |reference|`` with
  ``tolerance(dtype) = COMPUTE_EPS * eps(compute) + OUTPUT_EPS * eps(dtype)``:
  the drift of the arithmetic, in units of the precision it is computed in
  (float64 for float64 outputs, float32 otherwise: CPU runtimes compute
  16-bit floats in float32), plus a few units of rounding to the output's
  own dtype. float32: 6.2e-5; float16: 7.9e-3; bfloat16: 6.3e-2;
  float64: 1.2e-13.

``COMPUTE_EPS`` comes from measurement (``benchmarks/runtime_drift.md``): on
well-conditioned inputs no two correct float32 runtimes on the bench models and
two pretrained nets drift more than 37 eps apart, here or on the emulated
kernel paths of other CPUs; PyTorch against onnxruntime on an Intel Xeon
reached 120 eps. 512 keeps a margin of four over the Intel figure and of
fourteen over the measured ones. Where the same runtime runs the same kernels
(the worker and the edge running one segment), tests demand bit-exact results
instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from splitpoint.dtypes import float_info

COMPUTE_EPS = 512
OUTPUT_EPS = 8
_SCALE_FLOOR = 1e-6  # outputs smaller than this everywhere are compared as if they were this large
RULE = (f"|actual - reference| <= ({COMPUTE_EPS} eps(float32 or float64 compute) + {OUTPUT_EPS} eps(dtype)) "
        "x max|reference|; integers equal")


def tolerance(dtype: np.dtype) -> float:
    """The rule's bound on ``max |actual - reference| / max |reference|`` for outputs of ``dtype`` (0: equal)."""
    info = float_info(np.dtype(dtype))
    if info is None:
        return 0.0
    compute = np.finfo(np.float64 if np.dtype(dtype) == np.float64 else np.float32).eps
    return float(COMPUTE_EPS * compute + OUTPUT_EPS * info.eps)


@dataclass(frozen=True)
class Difference:
    """The worst difference over a set of outputs.

    ``ratio`` is the largest ``max_rel / tolerance`` over the outputs, the figure
    the rule bounds by 1 (infinite for unequal integers); ``tolerance`` is the
    bound of the output it was found on.
    """

    exact: bool
    max_abs: float
    max_rel: float
    tolerance: float
    ratio: float

    @property
    def ok(self) -> bool:
        return self.exact or self.ratio <= 1.0

    def as_dict(self) -> dict[str, float | bool]:
        return asdict(self)

    def worst(self, other: Difference) -> Difference:
        bound = max(self, other, key=lambda d: d.ratio).tolerance
        return Difference(self.exact and other.exact, max(self.max_abs, other.max_abs),
                          max(self.max_rel, other.max_rel), bound, max(self.ratio, other.ratio))

    def describe(self) -> str:
        """The figures and the rule they were judged by, for refusal messages."""
        verdict = "within" if self.ok else "beyond"
        share = f"{self.ratio:.3g}x the tolerance {self.tolerance:.2g}" if self.tolerance else "outputs not equal"
        return f"max_abs={self.max_abs:.3g}, max_rel={self.max_rel:.3g}, {share}: {verdict} the rule {RULE}"


EXACT = Difference(True, 0.0, 0.0, 0.0, 0.0)
_MISMATCH = Difference(False, float("inf"), float("inf"), 0.0, float("inf"))


def difference(reference: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray]) -> Difference:
    """Largest difference of ``actual`` from ``reference`` over the reference's outputs.

    A missing output or one of another shape or dtype is infinitely different.
    """
    result = EXACT
    for name, ref in reference.items():
        got = actual.get(name)
        if got is None or got.shape != ref.shape or got.dtype != ref.dtype:
            return _MISMATCH
        if np.array_equal(ref, got, equal_nan=float_info(ref.dtype) is not None):
            continue
        a, b = ref.astype(np.float64), got.astype(np.float64)
        diff = np.abs(a - b)
        diff[np.isnan(a) & np.isnan(b)] = 0.0
        abs_err = float(np.nan_to_num(diff, nan=np.inf).max())
        rel_err = abs_err / max(float(np.nanmax(np.abs(a), initial=0.0)), _SCALE_FLOOR)
        bound = tolerance(ref.dtype)
        result = result.worst(Difference(False, abs_err, rel_err, bound, rel_err / bound if bound else float("inf")))
    return result


def array_difference(reference: np.ndarray, actual: np.ndarray) -> Difference:
    """``difference`` of one array from another."""
    return difference({"": reference}, {"": actual})
