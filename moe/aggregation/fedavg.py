"""Streaming weighted FedAvg, with optional norm clipping of each update's delta.

The new part is `Σ wᵢ·xᵢ / Σ wᵢ` with `xᵢ = base + clip(uᵢ − base)`, which without clipping is
exactly the weighted average of the updates (McMahan et al., 2017). Only a running weighted
mean of the xᵢ (one array per parameter, float32 for float32 parameters:
`moe.aggregation.kernels.state_dtype`) and the total weight are kept, so memory is
O(parameters) however many devices report: updates are never buffered.

Why a running mean (`m ← (1 − sₖ)·m + sₖ·xₖ`, `sₖ = wₖ/Wₖ`) rather than a running sum
`Σ wᵢ·xᵢ`: the same streaming state, but independent of the weights' scale, so a tiny weight
(which would underflow) or a huge one (which would overflow the sum) still averages right. A
mean of updates rather than of deltas lets an unclipped update (the common case) fold without
touching the base: the fold runs at memory speed (`moe.aggregation.kernels`,
`benchmarks/aggregation.py`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from moe.aggregation.base import (
    AggregationRule,
    PartAccumulator,
    Plain,
    cast_like,
    check_state_array,
)
from moe.aggregation.errors import SnapshotError
from moe.aggregation.kernels import fold_into_mean, state_dtype
from moe.errors import InvalidArgumentError
from moe.tensors import PartTensors, TensorSpec

_MEAN_OF = "updates"
"""What the state's arrays are a running weighted mean of (checked on restore)."""


@dataclass(frozen=True, slots=True)
class FedAvg(AggregationRule):
    """Weighted federated averaging of one part, streaming.

    Attributes:
        max_norm: when set, each update's delta (update − base) is scaled down so that its L2
            norm over *all* the part's tensors together is at most `max_norm` (norm clipping
            as in DP-FedAvg; bounds any one device's pull). None disables clipping.
    """

    name: ClassVar[str] = "fedavg"
    max_norm: float | None = None

    def __post_init__(self) -> None:
        if self.max_norm is not None and not (
            isinstance(self.max_norm, int | float)
            and not isinstance(self.max_norm, bool)
            and math.isfinite(self.max_norm)
            and self.max_norm > 0
        ):
            raise InvalidArgumentError(
                f"fedavg max_norm must be finite and > 0, got {self.max_norm!r}"
            )

    def start(self, base: PartTensors) -> FedAvgAccumulator:
        """Open a streaming accumulator; see `AggregationRule.start`."""
        return FedAvgAccumulator(base, self.max_norm)

    def params(self) -> Plain:
        """`{"max_norm": ...}`."""
        return {"max_norm": self.max_norm}


class FedAvgAccumulator(PartAccumulator):
    """Running weighted mean of (clipped) deltas for one part in one round.

    Args:
        base: the part's tensors the round started from (held by reference).
        max_norm: the delta clipping bound, or None.
    """

    def __init__(self, base: PartTensors, max_norm: float | None = None) -> None:
        super().__init__(base)
        self._max_norm = max_norm
        self._means = {
            name: np.zeros(s.shape, state_dtype(s.dtype)) for name, s in self._layout.items()
        }
        self._clipped = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the running means: fixed by the layout, independent of the update count."""
        return sum(int(m.nbytes) for m in self._means.values())

    @property
    def clipped(self) -> int:
        """How many updates had their delta scaled down by clipping."""
        return self._clipped

    def _accumulate(
        self, update_key: str, tensors: PartTensors, weight: float, norm: float | None
    ) -> None:
        scale = 1.0
        if self._max_norm is not None:
            if norm is None:
                norm = self._delta_norm(tensors)
            if norm > self._max_norm:
                scale = self._max_norm / norm
                self._clipped += 1
        # The base class adds `weight` to the total after this returns; this update's share.
        share = weight / (self._total_weight + weight)
        for name, mean in self._means.items():
            fold_into_mean(mean, tensors[name], share, self._base[name], scale)

    def _result(self) -> dict[str, NDArray[Any]]:
        return cast_like(self._means, self._base, copy=True)  # the means go on changing

    def _state(self) -> tuple[Plain, dict[str, NDArray[Any]]]:
        meta = {"clipped": self._clipped, "mean_of": _MEAN_OF}
        return meta, {name: m.copy() for name, m in self._means.items()}

    def _load(self, meta: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]]) -> None:
        clipped = meta.get("clipped", 0)
        if isinstance(clipped, bool) or not isinstance(clipped, int) or clipped < 0:
            raise SnapshotError(f"fedavg clipped {clipped!r}")
        if meta.get("mean_of") != _MEAN_OF:
            # Before the memory-speed fold the state was a mean of deltas: not the same arrays.
            raise SnapshotError(f"fedavg state holds a mean of {meta.get('mean_of')!r}")
        if set(arrays) != set(self._means):
            raise SnapshotError(f"fedavg arrays {sorted(arrays)} != {sorted(self._means)}")
        self._means = {
            name: _state_array(arrays, name, spec) for name, spec in self._layout.items()
        }
        self._clipped = clipped


def _state_array(arrays: Mapping[str, NDArray[Any]], name: str, spec: TensorSpec) -> NDArray[Any]:
    """A checkpointed mean, in the state dtype; a float64 one (kept by versions that held
    float64 means) is narrowed to it."""
    dtype = state_dtype(spec.dtype)
    array = arrays.get(name)
    if isinstance(array, np.ndarray) and array.dtype == np.float64 and dtype != np.float64:
        return check_state_array(arrays, name, spec, "float64").astype(dtype)
    return check_state_array(arrays, name, spec, dtype.name)
