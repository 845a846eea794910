"""Memory-speed kernels for folding one update into a running mean, and for measuring it.

A weighted fold of updates is memory-bound: the floor is reading each update once and reading
and writing the state once. The fold is torch's `lerp_` over the whole array, one fused pass
(numpy needs a pass per operation). The running mean is float32 for float32 parameters, which
the result is anyway: its rounding error grows like √n ulp after n updates (measured: an rms of
0.8 ulp of the weights' scale after 10 updates, 6 after 1,000; `tests/unit/moe/
test_aggregation_kernels.py`), where a float64 mean doubled the bytes each fold streams
(`benchmarks/aggregation.py`).

The norm of a delta walks the arrays in blocks small enough that its one temporary stays in the
CPU cache (`BLOCK_ELEMENTS`): a whole-array `(u - b)` would stream a full-size temporary
through memory.

Arrays are used flat: C-contiguous ones (the codec's zero-copy tensors, the accumulators' own
state) as views; the state updated in place must be C-contiguous.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Final

import numpy as np
import torch
from numpy.typing import NDArray

BLOCK_ELEMENTS: Final = 1 << 17
"""Elements per block of the blockwise kernels (the delta norm, the clipped fold): 128 Ki, a
temporary of 0.5-1 MiB, inside a typical L2/L3 slice (measured when the fold was blockwise
numpy: 32 Ki blocks folded at 0.25-0.45 of the ceiling, 128 Ki at 0.4-0.7)."""


def _flat(array: NDArray[Any]) -> NDArray[Any]:
    # reshape(-1) is a view for C-contiguous arrays; a copy otherwise, which is still correct.
    return array.reshape(-1)


def squared_distance(update: NDArray[Any], base: NDArray[Any]) -> float:
    """‖update − base‖², summed in float64 over blocks, without a full-size temporary.

    For float32 arrays each block's differences and dot product are float32 (a relative error
    near 1e-7, at twice the speed of float64 throughout); a block whose float32 sum is not
    finite (an overflow, or a bad value) is redone in float64. Non-finite values in either
    array give a non-finite result (NaN and inf propagate).
    """
    u, b = _flat(update), _flat(base)
    if u.size != b.size:
        raise ValueError(f"sizes differ: {u.size} != {b.size}")
    narrow = u.dtype == b.dtype == np.float32
    wide = np.empty(min(u.size, BLOCK_ELEMENTS), np.float64)
    tmp = np.empty(wide.size, np.float32) if narrow else wide
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, u.size, BLOCK_ELEMENTS):
            stop = min(start + BLOCK_ELEMENTS, u.size)
            ub, bb = u[start:stop], b[start:stop]
            d = np.subtract(ub, bb, out=tmp[: stop - start], dtype=tmp.dtype)
            part = float(np.dot(d, d))
            if narrow and not math.isfinite(part):
                d = np.subtract(ub, bb, out=wide[: stop - start], dtype=np.float64)
                part = float(np.dot(d, d))
            total += part
    return total


def state_dtype(dtype: np.dtype[Any] | str) -> np.dtype[Any]:
    """The dtype a running mean of updates of `dtype` is kept in: float64 for float64
    parameters, float32 for every narrower float (the result is cast back to `dtype`)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _readable(array: NDArray[Any], dtype: np.dtype[Any]) -> torch.Tensor:
    """A flat torch view of `array` (a copy only when it is not native `dtype` and contiguous).

    The codec's zero-copy tensors are read-only; torch warns on wrapping those, and these
    kernels only read them.
    """
    flat = np.ascontiguousarray(_flat(array), dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(flat)


def fold_into_mean(
    mean: NDArray[Any],
    update: NDArray[Any],
    share: float,
    base: NDArray[Any] | None = None,
    scale: float = 1.0,
) -> None:
    """`mean ← mean + share·(x − mean)` in place, with x the (clipped) update.

    x is `update`, or `base + scale·(update − base)` when `scale` ≠ 1 (a clipped delta; `base`
    is then required). `mean` is a native float32 or float64 array (`state_dtype`); the update
    is read once. Why torch: its `lerp_` is this step as one fused pass over the arrays, where
    numpy needs three (`benchmarks/aggregation.py`); for share ≥ ½ it computes
    `x − (x − mean)·(1 − share)`, so a first update (share 1) is copied exactly.
    """
    if not mean.flags.c_contiguous or mean.dtype not in (np.float32, np.float64):
        raise ValueError("mean must be a C-contiguous float32 or float64 array (updated in place)")
    clipped = scale != 1.0
    if clipped and base is None:
        raise ValueError("a scaled update needs its base")
    m = torch.from_numpy(_flat(mean))
    u = _readable(update, mean.dtype)
    b = _readable(base, mean.dtype) if base is not None else u
    if not (m.numel() == u.numel() == b.numel()):
        raise ValueError(f"sizes differ: {m.numel()}, {u.numel()}, {b.numel()}")
    if not clipped:
        m.lerp_(u, share)
        return
    tmp = torch.empty(min(u.numel(), BLOCK_ELEMENTS), dtype=m.dtype)
    for start in range(0, u.numel(), BLOCK_ELEMENTS):
        stop = min(start + BLOCK_ELEMENTS, u.numel())
        x = torch.lerp(b[start:stop], u[start:stop], scale, out=tmp[: stop - start])
        m[start:stop].lerp_(x, share)


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
