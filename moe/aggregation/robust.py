"""Byzantine-robust rules: coordinate-wise median and trimmed mean (Yin et al., 2018).

Both need the round's updates side by side, so they buffer them, bounded by `max_updates`
(further updates are refused with `too-many-updates`); memory is
O(max_updates × parameters). The statistic is computed in float64 on `result()`.

Both are **unweighted** over the updates with positive weight: each device gets one vote.
Weights are reported by the devices themselves, so weighting a robust statistic by them would
let one hostile device buy influence by claiming many samples; robustness is the point of these
rules. Zero-weight updates (no samples routed to the part) are counted but not buffered, so they
neither vote nor use up `max_updates`.
"""

from __future__ import annotations

from abc import abstractmethod
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
from moe.errors import InvalidArgumentError, UpdateRejected
from moe.tensors import PartTensors

DEFAULT_MAX_UPDATES = 256


def _check_max_updates(rule: str, max_updates: object) -> None:
    if isinstance(max_updates, bool) or not isinstance(max_updates, int) or max_updates < 1:
        raise InvalidArgumentError(f"{rule} max_updates must be an int >= 1, got {max_updates!r}")


class BufferedAccumulator(PartAccumulator):
    """Keeps the round's updates (copies, in their own dtype) up to a bound.

    Args:
        base: the part's tensors the round started from (held by reference).
        max_updates: most updates with positive weight kept; more are refused.
    """

    def __init__(self, base: PartTensors, max_updates: int) -> None:
        super().__init__(base)
        self._max_updates = max_updates
        self._updates: list[dict[str, NDArray[Any]]] = []

    @property
    def nbytes(self) -> int:
        """Bytes of the buffered updates: grows with the update count, up to the bound."""
        return sum(int(a.nbytes) for update in self._updates for a in update.values())

    def _accumulate(
        self, update_key: str, tensors: PartTensors, weight: float, norm: float | None
    ) -> None:
        if len(self._updates) >= self._max_updates:
            raise UpdateRejected(
                "too-many-updates", f"{update_key}: buffer holds {self._max_updates} updates"
            )
        # Copy: the caller's arrays may be views of a message buffer that it reuses or frees.
        self._updates.append({name: np.array(tensors[name], copy=True) for name in self._layout})

    def _result(self) -> dict[str, NDArray[Any]]:
        values = {
            name: self._combine(np.stack([u[name] for u in self._updates]).astype(np.float64))
            for name in self._layout
        }
        return cast_like(values, self._base)

    @abstractmethod
    def _combine(self, stacked: NDArray[np.float64]) -> NDArray[np.float64]:
        """Reduce updates stacked on axis 0 (n ≥ 1 of them) to one array, coordinate-wise."""

    def _state(self) -> tuple[Plain, dict[str, NDArray[Any]]]:
        arrays = {
            f"{i}/{name}": array.copy()
            for i, update in enumerate(self._updates)
            for name, array in update.items()
        }
        return {"buffered": len(self._updates)}, arrays

    def _load(self, meta: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]]) -> None:
        n = meta.get("buffered")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self._max_updates:
            raise SnapshotError(f"buffered count {n!r} (max_updates {self._max_updates})")
        if len(arrays) != n * len(self._layout):
            raise SnapshotError(f"{len(arrays)} buffered arrays for {n} updates")
        self._updates = [
            {
                name: check_state_array(arrays, f"{i}/{name}", spec)
                for name, spec in self._layout.items()
            }
            for i in range(n)
        ]


class MedianAccumulator(BufferedAccumulator):
    """Coordinate-wise median of the buffered updates."""

    def _combine(self, stacked: NDArray[np.float64]) -> NDArray[np.float64]:
        # Even counts average the two middle values, as numpy's median does.
        median: NDArray[np.float64] = np.median(stacked, axis=0)
        return median


class TrimmedMeanAccumulator(BufferedAccumulator):
    """Coordinate-wise trimmed mean of the buffered updates.

    Args:
        base: the part's tensors the round started from (held by reference).
        max_updates: most updates with positive weight kept.
        trim_ratio: fraction cut from each end per coordinate.
    """

    def __init__(self, base: PartTensors, max_updates: int, trim_ratio: float) -> None:
        super().__init__(base, max_updates)
        self._trim_ratio = trim_ratio

    def _combine(self, stacked: NDArray[np.float64]) -> NDArray[np.float64]:
        n = stacked.shape[0]
        # int() floors like scipy.stats.trim_mean; trim_ratio < 0.5 leaves at least one value.
        cut = int(self._trim_ratio * n)
        ordered = np.sort(stacked, axis=0)
        mean: NDArray[np.float64] = ordered[cut : n - cut].mean(axis=0)
        return mean


@dataclass(frozen=True, slots=True)
class CoordinateMedian(AggregationRule):
    """Coordinate-wise median of the round's updates (unweighted, buffered).

    Attributes:
        max_updates: most updates with positive weight one round may hold.
    """

    name: ClassVar[str] = "median"
    max_updates: int = DEFAULT_MAX_UPDATES

    def __post_init__(self) -> None:
        _check_max_updates(self.name, self.max_updates)

    def start(self, base: PartTensors) -> MedianAccumulator:
        """Open a bounded buffer; see `AggregationRule.start`."""
        return MedianAccumulator(base, self.max_updates)

    def params(self) -> Plain:
        """`{"max_updates": ...}`."""
        return {"max_updates": self.max_updates}


@dataclass(frozen=True, slots=True)
class TrimmedMean(AggregationRule):
    """Coordinate-wise trimmed mean of the round's updates (unweighted, buffered).

    Per coordinate, the `int(trim_ratio · n)` smallest and as many largest of the n values are
    dropped and the rest averaged (as `scipy.stats.trim_mean`). With few updates nothing may be
    cut, which is a plain mean: robustness needs enough devices per part.

    Attributes:
        trim_ratio: fraction cut from each end, in [0, 0.5).
        max_updates: most updates with positive weight one round may hold.
    """

    name: ClassVar[str] = "trimmed-mean"
    trim_ratio: float = 0.1
    max_updates: int = DEFAULT_MAX_UPDATES

    def __post_init__(self) -> None:
        ratio = self.trim_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio < 0.5:
            raise InvalidArgumentError(
                f"trimmed-mean trim_ratio must be in [0, 0.5), got {ratio!r}"
            )
        _check_max_updates(self.name, self.max_updates)

    def start(self, base: PartTensors) -> TrimmedMeanAccumulator:
        """Open a bounded buffer; see `AggregationRule.start`."""
        return TrimmedMeanAccumulator(base, self.max_updates, float(self.trim_ratio))

    def params(self) -> Plain:
        """`{"trim_ratio": ..., "max_updates": ...}`."""
        return {"trim_ratio": self.trim_ratio, "max_updates": self.max_updates}
