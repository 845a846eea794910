"""The solvers' validated inputs (`Problem`, `prepare`) and array types.

The problem itself is stated in the package docstring (`moe.matching.solvers`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class Problem:
    """Scores and bounds after `prepare`: float64 / int64, capacities clipped to E, upper
    bounds to C."""

    scores: FloatArray
    cap: IntArray
    lower: IntArray
    upper: IntArray

    @property
    def shape(self) -> tuple[int, int]:
        c, e = self.scores.shape
        return int(c), int(e)


def prepare(scores: ArrayLike, cap: ArrayLike, lower: ArrayLike, upper: ArrayLike) -> Problem:
    """Validate shapes and values; clip capacities to E and upper bounds to C."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (C, E), got shape {s.shape}")
    c, e = s.shape
    if e == 0:
        raise ValueError("scores must have at least one expert column")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (no NaN or inf)")
    k = np.asarray(cap, dtype=np.int64)
    lo = np.asarray(lower, dtype=np.int64)
    up = np.asarray(upper, dtype=np.int64)
    for name, arr, n in (("cap", k, c), ("lower", lo, e), ("upper", up, e)):
        if arr.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
        if (arr < 0).any():
            raise ValueError(f"{name} must be >= 0")
    # A client trains an expert at most once, and an expert has at most C clients: clipping
    # keeps the arithmetic tight without changing the feasible set.
    return Problem(s, np.minimum(k, e), lo, np.minimum(up, c))
