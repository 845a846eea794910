"""The aggregation rule interface: one rule, one part, one round.

An `AggregationRule` is immutable configuration (which rule, its parameters). `start(base)`
opens a `PartAccumulator` for one part in one round; updates are `add`ed to it as they arrive
and `result()` gives the part's new tensors. Splitting the two keeps rules shareable across
parts and threads, and puts all per-round state in one object that can be checkpointed
(`state()`) and rebuilt (`AggregationRule.restore`).

Shared semantics, enforced here so that every rule behaves the same:

- `add` validates the update against the base's layout and refuses it with
  `moe.errors.UpdateRejected` *before* changing any state, so a refused update leaves the
  accumulator exactly as it was. A caller that needs the delta's norm before deciding (the
  aggregator's outlier rule) calls `check` first and passes its `CheckedTensors` to `add`,
  which then neither validates nor measures again: each pass over a large part costs as much
  as the fold itself.
- A zero weight is valid and has no effect on the result (it is still counted).
- `result()` is None when nothing with positive weight was added: the caller keeps the base.
- Accumulators do not deduplicate; the ledger (`moe.aggregation.ledger`) does.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from moe.aggregation.errors import SnapshotError
from moe.aggregation.kernels import squared_distance
from moe.aggregation.validation import check_tensors, check_weight, layout_of
from moe.errors import UpdateRejected
from moe.tensors import PartTensors, TensorSpec

# JSON-able plain data (dicts, lists, str, int, float, bool, None), as checkpoints store it.
Plain = dict[str, Any]


@dataclass(frozen=True, slots=True)
class AccumulatorState:
    """An open accumulator as plain data, for checkpoints.

    Attributes:
        meta: JSON-able scalars and lists (counts, total weight, rule-specific fields).
        arrays: the accumulator's arrays by a rule-specific key; copies, safe to keep.
    """

    meta: Plain
    arrays: Mapping[str, NDArray[Any]]


@dataclass(frozen=True, slots=True)
class CheckedTensors:
    """An update's tensors that `PartAccumulator.check` validated against its layout, with the
    L2 norm of their delta from its base."""

    tensors: PartTensors
    norm: float


class PartAccumulator(ABC):
    """One round's aggregation of one part, fed one update at a time.

    Args:
        base: the part's tensors at the start of the round (the version devices trained from).
            Held by reference, not copied, to keep memory at O(parameters): the caller must not
            mutate it while the accumulator is in use.
    """

    def __init__(self, base: PartTensors) -> None:
        self._base = base
        self._layout: dict[str, TensorSpec] = layout_of(base)
        self._count = 0
        self._total_weight = 0.0

    @property
    def base(self) -> PartTensors:
        """The tensors this round started from."""
        return self._base

    @property
    def count(self) -> int:
        """Updates added so far, zero-weight ones included."""
        return self._count

    @property
    def total_weight(self) -> float:
        """Sum of the weights added so far."""
        return self._total_weight

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes of array state the accumulator holds, not counting the base."""

    def check(self, update_key: str, tensors: PartTensors) -> CheckedTensors:
        """Validate an update's tensors against the base's layout and measure its delta's norm.

        Raises:
            UpdateRejected: a validation reason (`wrong-shape`, `non-finite`, ...).
        """
        try:
            check_tensors(tensors, self._layout)  # before any arithmetic on them
        except UpdateRejected as exc:
            raise UpdateRejected(exc.reason, f"{update_key}: {exc.detail}") from None
        return CheckedTensors(tensors, self._delta_norm(tensors))

    def _delta_norm(self, tensors: PartTensors) -> float:
        """L2 norm of `tensors` − the base over every parameter (validated tensors only)."""
        return math.sqrt(
            sum(squared_distance(tensors[name], self._base[name]) for name in self._layout)
        )

    def add(self, update_key: str, tensors: PartTensors | CheckedTensors, weight: float) -> None:
        """Fold one update into the aggregate.

        Args:
            update_key: identifies the update in error details (the aggregator passes the
                device id). Never used to deduplicate.
            tensors: the update's full tensors (not a delta) for every parameter of the part,
                with the base's shapes and dtypes; or what `check` returned for them.
            weight: the update's weight, >= 0: samples the device routed to this expert, or
                its sample count for the shared part. Zero adds nothing but is counted.

        Raises:
            UpdateRejected: a validation reason (`bad-weight`, `wrong-shape`, `non-finite`,
                ...) or a rule-specific one (`too-many-updates`); the state is then unchanged.
        """
        value = check_weight(weight)
        if isinstance(tensors, CheckedTensors):
            arrays, norm = tensors.tensors, tensors.norm
        else:
            try:
                check_tensors(tensors, self._layout)
            except UpdateRejected as exc:
                raise UpdateRejected(exc.reason, f"{update_key}: {exc.detail}") from None
            arrays, norm = tensors, None
        total = self._total_weight + value
        if not math.isfinite(total):
            raise UpdateRejected("bad-weight", f"{update_key}: total weight overflows")
        if value > 0:
            self._accumulate(update_key, arrays, value, norm)
        self._count += 1
        self._total_weight = total

    def result(self) -> dict[str, NDArray[Any]] | None:
        """The aggregated part, or None when no positive weight was added (keep the base).

        Does not close the accumulator: more updates may follow, and calling it twice with no
        add in between gives equal results.

        Returns:
            New arrays, one per parameter, with the base's shapes and dtypes; or None.
        """
        if self._total_weight <= 0:
            return None
        return self._result()

    def state(self) -> AccumulatorState:
        """This accumulator as plain data (arrays copied), for a checkpoint."""
        meta, arrays = self._state()
        return AccumulatorState(
            meta={"count": self._count, "total_weight": self._total_weight, **meta},
            arrays=arrays,
        )

    def load(self, state: AccumulatorState) -> None:
        """Replace this (fresh) accumulator's state with a checkpointed one.

        Args:
            state: what `state()` returned, possibly after a JSON round trip of `meta`.

        Raises:
            SnapshotError: when the state is malformed or does not fit the base's layout.
        """
        count = state.meta.get("count")
        total = state.meta.get("total_weight")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise SnapshotError(f"accumulator count {count!r}")
        if isinstance(total, bool) or not isinstance(total, int | float):
            raise SnapshotError(f"accumulator total_weight {total!r}")
        if not math.isfinite(total) or total < 0:
            raise SnapshotError(f"accumulator total_weight {total!r}")
        self._load(state.meta, state.arrays)
        self._count = count
        self._total_weight = float(total)

    @abstractmethod
    def _accumulate(
        self, update_key: str, tensors: PartTensors, weight: float, norm: float | None
    ) -> None:
        """Fold in a validated update with weight > 0 (`norm`: its delta's L2 norm when
        already measured); raise UpdateRejected before any change."""

    @abstractmethod
    def _result(self) -> dict[str, NDArray[Any]]:
        """The aggregate, called only when the total weight is positive."""

    @abstractmethod
    def _state(self) -> tuple[Plain, dict[str, NDArray[Any]]]:
        """Rule-specific JSON-able meta and copied arrays."""

    @abstractmethod
    def _load(self, meta: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]]) -> None:
        """Restore rule-specific state; raise SnapshotError when it does not fit."""


class AggregationRule(ABC):
    """How one part's updates of one round combine into its next version.

    Implementations are immutable and pure: the same base and the same updates give the same
    result (up to float summation order for streaming rules).
    """

    name: ClassVar[str]

    @abstractmethod
    def start(self, base: PartTensors) -> PartAccumulator:
        """Open an accumulator for one part in one round.

        Args:
            base: the part's current tensors, which the round's devices trained from. Not
                copied; must not be mutated while the accumulator is in use.

        Returns:
            An empty accumulator.
        """

    @abstractmethod
    def params(self) -> Plain:
        """The rule's parameters as JSON-able data; `make_rule(name, **params())` rebuilds it."""

    def restore(self, base: PartTensors, state: AccumulatorState) -> PartAccumulator:
        """Rebuild an accumulator from `PartAccumulator.state()`.

        Args:
            base: the same base the checkpointed accumulator was started with.
            state: the checkpointed state.

        Returns:
            An accumulator that continues exactly where the checkpointed one stopped.

        Raises:
            SnapshotError: when the state is malformed or does not fit.
        """
        accumulator = self.start(base)
        accumulator.load(state)
        return accumulator


def cast_like(
    values: Mapping[str, NDArray[Any]], base: PartTensors, *, copy: bool = False
) -> dict[str, Any]:
    """Cast results back to each base tensor's dtype (shapes are already the base's); with
    `copy`, new arrays even where the dtype is the same."""
    return {name: values[name].astype(base[name].dtype, copy=copy) for name in base}


def check_state_array(
    arrays: Mapping[str, NDArray[Any]], key: str, spec: TensorSpec, dtype: str | None = None
) -> NDArray[Any]:
    """Fetch `arrays[key]` from a checkpoint, checking shape, dtype and finiteness.

    Args:
        arrays: checkpointed arrays.
        key: the array's key.
        spec: the shape (and, unless `dtype` is given, dtype) it must have.
        dtype: overrides the dtype required (an accumulator's own state dtype).

    Returns:
        A writable copy of the array.

    Raises:
        SnapshotError: when it is missing or does not fit.
    """
    array = arrays.get(key)
    if not isinstance(array, np.ndarray):
        raise SnapshotError(f"accumulator array {key!r} missing")
    want = TensorSpec(spec.shape, dtype or spec.dtype)
    if not want.matches(array) or not np.isfinite(array).all():
        raise SnapshotError(f"accumulator array {key!r} does not fit {want}")
    return np.array(array, copy=True)
