"""Checks an update must pass before it may touch an aggregate.

Updates come from devices, so everything here treats them as hostile: a wrong name, shape,
dtype, a NaN or a negative weight raises `moe.errors.UpdateRejected` with a short reason code
(usable as a metrics label) and a human-readable detail. Checks run cheapest first, so a
malformed update is refused before any O(parameters) scan.

Reason codes raised here (`VALIDATION_REASONS`):

| reason          | meaning                                                         |
|-----------------|-----------------------------------------------------------------|
| `unknown-part`  | the model has no part with this id                              |
| `bad-weight`    | weight is not a real number, is negative, NaN or infinite       |
| `wrong-type`    | tensors is not a mapping, or a value is not a numpy array       |
| `missing-tensor`| a parameter of the layout is absent                             |
| `extra-tensor`  | a parameter not in the layout is present                        |
| `wrong-shape`   | a tensor's shape differs from the layout                        |
| `wrong-dtype`   | a tensor's dtype (byte order included) differs from the layout  |
| `non-finite`    | a tensor holds NaN or ±inf                                      |
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from moe.aggregation.kernels import all_finite
from moe.errors import LayoutError, UpdateRejected
from moe.tensors import PartLayout, PartTensors, TensorSpec

VALIDATION_REASONS = frozenset(
    {
        "unknown-part",
        "bad-weight",
        "wrong-type",
        "missing-tensor",
        "extra-tensor",
        "wrong-shape",
        "wrong-dtype",
        "non-finite",
    }
)

# Names listed in a detail are capped so a hostile update cannot make the message huge.
_MAX_NAMES_IN_DETAIL = 5


def check_weight(weight: object) -> float:
    """Return `weight` as a float, or refuse it.

    Zero is allowed: a device that routed no samples to an expert is a valid, no-effect update.

    Args:
        weight: the aggregation weight the caller derived from the update (samples routed to the
            expert, or the device's sample count for `shared`).

    Returns:
        The weight as a Python float.

    Raises:
        UpdateRejected: `bad-weight` when it is not a real number (bools included), is negative,
            NaN or infinite.
    """
    # bool is an int subclass; a True weight is a caller bug, not a sample count.
    if isinstance(weight, bool) or not isinstance(weight, int | float | np.integer | np.floating):
        raise UpdateRejected("bad-weight", f"weight must be a real number, got {type(weight)}")
    value = float(weight)
    if not math.isfinite(value) or value < 0:
        raise UpdateRejected("bad-weight", f"weight must be finite and >= 0, got {value!r}")
    return value


def check_tensors(tensors: object, layout: PartLayout) -> None:
    """Check an update's tensors against a part layout.

    Args:
        tensors: the update's tensors by parameter name (untrusted: any object is refused
            cleanly, not with a TypeError).
        layout: the part's expected parameter names, shapes and dtypes.

    Raises:
        UpdateRejected: `wrong-type`, `missing-tensor`, `extra-tensor`, `wrong-shape`,
            `wrong-dtype` or `non-finite` (the first problem found, structure before values).
    """
    if not isinstance(tensors, Mapping):
        raise UpdateRejected("wrong-type", f"tensors must be a mapping, got {type(tensors)}")
    missing = [name for name in layout if name not in tensors]
    if missing:
        raise UpdateRejected("missing-tensor", _names(missing))
    extra = [str(name) for name in tensors if name not in layout]
    if extra:
        raise UpdateRejected("extra-tensor", _names(extra))
    for name, spec in layout.items():
        array = tensors[name]
        if not isinstance(array, np.ndarray):
            raise UpdateRejected("wrong-type", f"{name}: not a numpy array ({type(array)})")
        if tuple(array.shape) != spec.shape:
            raise UpdateRejected("wrong-shape", f"{name}: {array.shape} != {spec.shape}")
        if array.dtype != np.dtype(spec.dtype):
            raise UpdateRejected("wrong-dtype", f"{name}: {array.dtype} != {spec.dtype}")
    # Values last: this is the only O(parameters) pass, done once the structure is known good.
    for name in layout:
        if not all_finite(tensors[name]):
            raise UpdateRejected("non-finite", f"{name}: contains NaN or inf")


def validate_update(
    part_id: str, tensors: object, layout: PartLayout | None, weight: object
) -> float:
    """Check one device's update of one part before aggregation.

    Args:
        part_id: the part the update claims to train (`shared`, `expert-3`, ...); only used for
            error details here, the caller resolves it to `layout`.
        tensors: the update's tensors by parameter name.
        layout: the part's layout, or None when the model has no such part; callers typically
            pass `model_layout.get(part_id)`.
        weight: the update's aggregation weight.

    Returns:
        The weight as a float.

    Raises:
        UpdateRejected: `unknown-part`, or any reason of `check_weight` and `check_tensors`,
            with the part id in the detail.
    """
    if layout is None:
        raise UpdateRejected("unknown-part", f"no part {part_id!r} in the model")
    try:
        value = check_weight(weight)
        check_tensors(tensors, layout)
    except UpdateRejected as exc:
        raise UpdateRejected(exc.reason, f"{part_id}: {exc.detail}") from None
    return value


def layout_of(tensors: PartTensors) -> dict[str, TensorSpec]:
    """The layout that `tensors` has (names, shapes, dtypes), e.g. to check updates against a base.

    Args:
        tensors: a part's tensors by parameter name.

    Returns:
        A fresh layout mapping each name to its array's shape and dtype name.
    """
    return {
        name: TensorSpec(tuple(int(d) for d in a.shape), _dtype_name(a))
        for name, a in tensors.items()
    }


def _dtype_name(array: np.ndarray) -> str:
    # "float32" reads well in a layout; a non-native byte order needs the explicit ">f4" form
    # so that the spec still tells it apart from the native dtype.
    return array.dtype.name if array.dtype.byteorder in "=|" else array.dtype.str


def check_layout(tensors: PartTensors, layout: PartLayout, what: str = "tensors") -> None:
    """Check trusted-but-verified tensors (a base, a checkpoint) against a layout.

    Unlike `check_tensors`, a mismatch here is a configuration or programming error, not a
    hostile device, so it raises `LayoutError`.

    Args:
        tensors: the tensors to check.
        layout: the expected layout.
        what: names the tensors in the error message.

    Raises:
        LayoutError: on any missing or extra name, wrong shape or dtype, or non-finite value.
    """
    try:
        check_tensors(tensors, layout)
    except UpdateRejected as exc:
        raise LayoutError(f"{what}: {exc}") from None


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in sorted(names)[:_MAX_NAMES_IN_DETAIL])
    more = len(names) - _MAX_NAMES_IN_DETAIL
    return f"{shown} (+{more} more)" if more > 0 else shown
