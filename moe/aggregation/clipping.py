"""Adaptive norm clipping: FedAvg whose clipping bound follows the part's recent update norms.

`clipped-fedavg` is streaming weighted FedAvg (`moe.aggregation.fedavg`) with each update's
delta clipped at a bound set when the round opens:

    bound = multiplier × median(the part's last `window` update norms),

the norms being those of the deltas applied in previous rounds, before clipping. With fewer
than `min_history` norms known (a part's first rounds) nothing is clipped.

Why the bound comes from previous rounds rather than from the round's own updates: FedAvg
folds updates as they arrive, in O(parameters) memory, and a bound fixed at the round's opening
keeps it so (and the result independent of arrival order). Buffering a part's updates until
close would cost O(updates × parameters), and few devices train an expert in a round: with two
updates, one of them a device scaling its delta ×10, the round's own median is half the
attacker's norm. A window spanning several rounds holds many honest norms, so its median stays
an honest norm while fewer than half of the updates in the window are hostile; it also follows
the norms down as training converges. This is adaptive clipping in the sense of Andrew et al.
(2021), with the tracked quantile (the median) computed over a window instead of estimated by
geometric updates: the window is small (a few hundred bytes per part) and exact.

Clipping bounds what a hostile device can do through size (`scale`, `noise` attacks); a
sign-flipped delta of honest size passes unchanged, and the weight cap (the aggregator's
`over-weight` verdict) bounds what it can do through a claimed sample count.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from moe.aggregation.base import AggregationRule, Plain
from moe.aggregation.errors import SnapshotError
from moe.aggregation.fedavg import FedAvgAccumulator
from moe.errors import InvalidArgumentError
from moe.tensors import PartTensors

# 4, not 2: at 2 the outlier refusal (2 × the bound) refused honest updates of heterogeneous
# fleets and stalled training; retuned on the tuning seeds (moe/simulation/TUNING.md §4).
DEFAULT_MULTIPLIER = 4.0
DEFAULT_WINDOW = 64
DEFAULT_MIN_HISTORY = 3
DEFAULT_REJECT_ABOVE = 2.0


def clip_bound(norms: Sequence[float], multiplier: float, min_history: int) -> float | None:
    """The clipping bound a set of recent update norms gives.

    Args:
        norms: L2 norms of recent updates' deltas (before clipping), any order.
        multiplier: the bound is this many times their median.
        min_history: fewer norms than this give no bound.

    Returns:
        `multiplier × median(norms)`, or None (do not clip) when there are fewer than
        `min_history` norms or the median is 0 (every recent update left the part as it was).
    """
    if len(norms) < max(min_history, 1):
        return None
    median = statistics.median(norms)
    if not median > 0:
        return None
    return multiplier * median


class NormHistory:
    """The last `window` update norms of one part, oldest first.

    Args:
        window: how many norms are kept (>= 1).
        norms: initial norms, oldest first (only the last `window` are kept).

    Raises:
        InvalidArgumentError: for a window < 1 or a norm that is not finite and >= 0.
    """

    def __init__(self, window: int, norms: Iterable[float] = ()) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise InvalidArgumentError(f"norm window must be an int >= 1, got {window!r}")
        self._norms: deque[float] = deque(maxlen=window)
        self.extend(norms)

    @property
    def window(self) -> int:
        """How many norms are kept."""
        maxlen = self._norms.maxlen
        assert maxlen is not None  # always built with one
        return maxlen

    @property
    def norms(self) -> tuple[float, ...]:
        """The kept norms, oldest first."""
        return tuple(self._norms)

    def extend(self, norms: Iterable[float]) -> None:
        """Append norms (newest last), forgetting the oldest beyond the window."""
        for norm in norms:
            value = float(norm)
            if not math.isfinite(value) or value < 0:
                raise InvalidArgumentError(f"update norm must be finite and >= 0, got {norm!r}")
            self._norms.append(value)

    def to_plain(self) -> Plain:
        """JSON-able data; `from_plain` rebuilds it."""
        return {"window": self.window, "norms": list(self._norms)}

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> NormHistory:
        """Rebuild from `to_plain` output.

        Raises:
            SnapshotError: when the data is malformed.
        """
        window, norms = data.get("window"), data.get("norms")
        if not isinstance(norms, list | tuple) or not all(
            isinstance(n, int | float) and not isinstance(n, bool) for n in norms
        ):
            raise SnapshotError(f"norm history norms {norms!r}")
        try:
            return cls(window, norms)  # type: ignore[arg-type]  # checked by the constructor
        except InvalidArgumentError as exc:
            raise SnapshotError(f"norm history: {exc}") from None


@dataclass(frozen=True, slots=True)
class ClippedFedAvg(AggregationRule):
    """Streaming weighted FedAvg with an adaptive clipping bound (see the module docs).

    Attributes:
        multiplier: the bound is this many times the median of the recent norms (> 0).
        window: how many recent update norms of a part the bound is derived from (>= 1).
        min_history: norms needed before anything is clipped (>= 1).
    """

    name: ClassVar[str] = "clipped-fedavg"
    multiplier: float = DEFAULT_MULTIPLIER
    window: int = DEFAULT_WINDOW
    min_history: int = DEFAULT_MIN_HISTORY
    reject_above: float | None = DEFAULT_REJECT_ABOVE

    def __post_init__(self) -> None:
        m = self.multiplier
        if (
            isinstance(m, bool)
            or not isinstance(m, int | float)
            or not (math.isfinite(m) and m > 0)
        ):
            raise InvalidArgumentError(f"clipped-fedavg multiplier must be > 0, got {m!r}")
        r = self.reject_above
        if r is not None and (
            isinstance(r, bool)
            or not isinstance(r, int | float)
            or not (math.isfinite(r) and r >= 1)
        ):
            raise InvalidArgumentError(f"clipped-fedavg reject_above must be >= 1, got {r!r}")
        for attr in ("window", "min_history"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"clipped-fedavg {attr} must be an int >= 1")

    def start(self, base: PartTensors) -> FedAvgAccumulator:
        """An unclipped accumulator (no history yet); see `start_clipped`."""
        return FedAvgAccumulator(base, None)

    def start_clipped(self, base: PartTensors, bound: float | None) -> FedAvgAccumulator:
        """An accumulator that clips every delta at `bound` (None: no clipping)."""
        return FedAvgAccumulator(base, bound)

    def bound(self, history: NormHistory) -> float | None:
        """The bound a part with this norm history gets for its next round."""
        return clip_bound(history.norms, float(self.multiplier), self.min_history)

    def history(self, norms: Iterable[float] = ()) -> NormHistory:
        """An empty (or seeded) norm history of this rule's window."""
        return NormHistory(self.window, norms)

    def params(self) -> Plain:
        """`{"multiplier": ..., "window": ..., "min_history": ...}`."""
        return {
            "multiplier": self.multiplier,
            "window": self.window,
            "min_history": self.min_history,
            "reject_above": self.reject_above,
        }
