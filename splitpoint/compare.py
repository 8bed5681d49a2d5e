"""How close two sets of outputs are: one measure for verification, the demo and tests.

Splitting can change which kernels the runtime fuses, so outputs may differ
in the last bits; they count as equal when exact, or within ``TOLERANCE``
relative to the reference's largest magnitude.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

TOLERANCE = 1e-5
_SCALE_FLOOR = 1e-6  # outputs smaller than this everywhere are compared as if they were this large


@dataclass(frozen=True)
class Difference:
    exact: bool
    max_abs: float
    max_rel: float

    @property
    def ok(self) -> bool:
        return self.exact or self.max_rel <= TOLERANCE

    def as_dict(self) -> dict[str, float | bool]:
        return asdict(self)

    def worst(self, other: Difference) -> Difference:
        return Difference(self.exact and other.exact, max(self.max_abs, other.max_abs), max(self.max_rel, other.max_rel))


EXACT = Difference(True, 0.0, 0.0)
_MISMATCH = Difference(False, float("inf"), float("inf"))


def difference(reference: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray]) -> Difference:
    """Largest difference of ``actual`` from ``reference`` over the reference's outputs.

    A missing output or one of another shape or dtype is infinitely different.
    """
    result = EXACT
    for name, ref in reference.items():
        got = actual.get(name)
        if got is None or got.shape != ref.shape or got.dtype != ref.dtype:
            return _MISMATCH
        if np.array_equal(ref, got, equal_nan=ref.dtype.kind in "fc"):
            continue
        a, b = ref.astype(np.float64), got.astype(np.float64)
        diff = np.abs(a - b)
        diff[np.isnan(a) & np.isnan(b)] = 0.0
        abs_err = float(np.nan_to_num(diff, nan=np.inf).max())
        scale = max(float(np.nanmax(np.abs(a), initial=0.0)), _SCALE_FLOOR)
        result = result.worst(Difference(False, abs_err, abs_err / scale))
    return result
