"""Memory-speed numpy kernels for folding one update into a float64 running mean.

A weighted fold of float32 updates is memory-bound: the floor is reading each update once and
reading and writing the float64 state once. Whole-array numpy expressions (`(u - b) * w`, then
`m += t`) allocate full-size temporaries and stream every one of them through memory, and a
float32 → float64 `subtract(..., dtype=float64)` runs numpy's slow buffered-cast loop. These
kernels walk the arrays in blocks small enough that their one temporary stays in the CPU cache
(`BLOCK_ELEMENTS`), so main memory sees only the operands (`benchmarks/aggregation.py`).

Arrays are used flat: C-contiguous ones (the codec's zero-copy tensors, the accumulators' own
state) as views; the state updated in place must be C-contiguous.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

BLOCK_ELEMENTS: Final = 1 << 17
"""Elements per block: 128 Ki float64 = 1 MiB of temporary, inside a typical L2/L3 slice
(measured here: 32 Ki blocks fold at 0.25-0.45 of the ceiling, 128 Ki at 0.4-0.7)."""


def _flat(array: NDArray[Any]) -> NDArray[Any]:
    # reshape(-1) is a view for C-contiguous arrays; a copy otherwise, which is still correct.
    return array.reshape(-1)


def squared_distance(update: NDArray[Any], base: NDArray[Any]) -> float:
    """‖update − base‖² in float64, without a full-size temporary.

    Non-finite values in either array give a non-finite result (NaN and inf propagate).
    """
    u, b = _flat(update), _flat(base)
    if u.size != b.size:
        raise ValueError(f"sizes differ: {u.size} != {b.size}")
    tmp = np.empty(min(u.size, BLOCK_ELEMENTS), np.float64)
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, u.size, BLOCK_ELEMENTS):
            stop = min(start + BLOCK_ELEMENTS, u.size)
            d = np.subtract(u[start:stop], b[start:stop], out=tmp[: stop - start], dtype=np.float64)
            total += float(np.dot(d, d))
    return total


def fold_into_mean(
    mean: NDArray[np.float64],
    update: NDArray[Any],
    share: float,
    base: NDArray[Any] | None = None,
    scale: float = 1.0,
) -> None:
    """`mean ← (1 − share)·mean + share·x` in place, blockwise, with x the (clipped) update.

    x is `update`, or `base + scale·(update − base)` when `scale` ≠ 1 (a clipped delta; `base`
    is then required). The float32 update is widened to float64 once per block, in cache.
    """
    if not mean.flags.c_contiguous:
        raise ValueError("mean must be C-contiguous (it is updated in place)")
    clipped = scale != 1.0
    if clipped and base is None:
        raise ValueError("a scaled update needs its base")
    m, u = _flat(mean), _flat(update)
    b = _flat(base) if base is not None else u
    if not (m.size == u.size == b.size):
        raise ValueError(f"sizes differ: {m.size}, {u.size}, {b.size}")
    tmp = np.empty(min(u.size, BLOCK_ELEMENTS), np.float64)
    keep = 1.0 - share
    for start in range(0, u.size, BLOCK_ELEMENTS):
        stop = min(start + BLOCK_ELEMENTS, u.size)
        t, block = tmp[: stop - start], m[start:stop]
        np.copyto(t, u[start:stop])
        if clipped:
            t -= b[start:stop]
            t *= scale
            t += b[start:stop]
        t *= share
        block *= keep
        block += t


def all_finite(array: NDArray[Any]) -> bool:
    """True when no element is NaN or ±inf; one read of the array, no full-size temporary.

    A finite sum of squares proves every element finite (NaN and inf propagate through it);
    only when it is not finite (a bad value, or finite values whose squares overflow) is the
    exact elementwise test run.
    """
    flat = _flat(array)
    if flat.dtype.kind != "f":
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(float(np.dot(flat, flat))):
            return True
    return bool(np.isfinite(flat).all())
