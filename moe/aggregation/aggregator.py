"""One part's aggregation across rounds: version, weights, ledger, and the open round.

`PartAggregator` is what the aggregator service (one per owned part) and the in-process
simulation both drive, so they run the same decisions. It is pure: no files, no clocks, no
broker; the caller decides when a round opens and closes (quorum, deadline) and persists
`snapshot()` atomically.

Every `offer` returns a `Verdict` whose status is one of the wire's `UpdateAck` statuses.
Checks run in this order; the first that matches decides:

| status      | reason            | when                                                         |
|-------------|-------------------|--------------------------------------------------------------|
| `rejected`  | `bad-key`         | round/base_version not ints, device id not a non-empty str   |
| `duplicate` | (none)            | (round, device, part) was already applied (in the ledger)    |
| `late`      | `stale`           | the round is older than the ledger window                    |
| `rejected`  | `future-round`    | the round was never opened here (newer than the last opened) |
| `late`      | `round-closed`    | the round was opened here but is closed (or superseded)      |
| `rejected`  | `unassigned`      | the round was opened with its assignments and the device was |
|             |                   | not assigned this part                                       |
| `rejected`  | `stale`           | base_version < current version: trained from an old version  |
| `rejected`  | `unknown-version` | base_version > current version                               |
| `rejected`  | `over-weight`     | the weight exceeds the device's cap (the samples its profile |
|             |                   | says it holds), or is not a number (`bad-weight`)            |
| `rejected`  | a validation code | see `moe.aggregation.validation`, or `too-many-updates`      |
| `applied`   | (none)            | folded into the round's aggregate and recorded               |

Behind the gateway nothing a device says about others is trusted: when the caller opens a round
with its assignments (`open_round(r, assigned={device: cap})`, what the matcher decided), an
update counts only from a device assigned this part in this round, and its weight (the samples
it claims) is capped by what its profile says it holds. Under `clipped-fedavg`
(`moe.aggregation.clipping`) the aggregator also keeps the part's recent update norms, from
which each round's clipping bound is derived when it opens.

Duplicates are checked before round and version on purpose: a device that resends an applied
update after the round closed must hear "duplicate" (stop resending, it counted), not "late".
Only applied updates are recorded, so a refused update can be fixed and resent. Correctness
does not depend on the ledger window: only the open round ever applies updates, and the open
round is always inside the window; the window only decides how long "duplicate" can be told
from "late".

`future-round` needs the caller's care: updates and round events travel on different topics,
so an update can arrive before its RoundOpened. A service should open the round (or hold the
update) before offering it, since a device drops an update that was answered `rejected`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, TypeGuard

import numpy as np
from numpy.typing import NDArray

from moe.aggregation.base import (
    AccumulatorState,
    AggregationRule,
    PartAccumulator,
    Plain,
)
from moe.aggregation.clipping import ClippedFedAvg, NormHistory
from moe.aggregation.errors import RoundStateError, SnapshotError
from moe.aggregation.kernels import squared_distance
from moe.aggregation.ledger import DEFAULT_WINDOW, UpdateKey, UpdateLedger
from moe.aggregation.registry import rule_from_plain, rule_to_plain
from moe.aggregation.validation import (
    VALIDATION_REASONS,
    check_layout,
    check_weight,
)
from moe.errors import InvalidArgumentError, UpdateRejected
from moe.tensors import PartLayout, PartTensors

VerdictStatus = Literal["applied", "duplicate", "late", "rejected"]

_FORMAT = 1

# Every reason a verdict can carry, e.g. to pre-register metrics labels.
VERDICT_REASONS = VALIDATION_REASONS | {
    "bad-key",
    "stale",
    "future-round",
    "round-closed",
    "unknown-version",
    "too-many-updates",
    "unassigned",
    "over-weight",
    "outlier-norm",
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """The aggregator's answer to one offered update.

    Attributes:
        status: `applied`, `duplicate`, `late` or `rejected` (the `UpdateAck` statuses).
        reason: a short code for `late` and `rejected` (metrics label, ack reason); empty else.
        detail: human-readable context for logs and dead letters.
    """

    status: VerdictStatus
    reason: str = ""
    detail: str = ""

    @property
    def label(self) -> str:
        """`status` or `status/reason`, e.g. `rejected/non-finite`, for counting."""
        return f"{self.status}/{self.reason}" if self.reason else self.status


@dataclass(frozen=True, slots=True)
class RoundStats:
    """What one closed round did to one part.

    Attributes:
        part: the part id.
        round: the round closed.
        base_version: the version the round started from.
        version: the version after closing (base_version + 1 when `updated`).
        updated: whether a new version was made (some update with positive weight applied).
        applied: updates applied, zero-weight ones included.
        total_weight: sum of the applied weights.
        update_norm: L2 norm of (new − old) over all the part's tensors; 0 when not updated.
        verdicts: count of each verdict label (`Verdict.label`) offered while the round was
            open, whatever round the offers named.
        clip_bound: the round's clipping bound (`clipped-fedavg`), None when nothing was clipped
            at (another rule, or too little history).
        clipped: applied updates whose delta the bound scaled down.
    """

    part: str
    round: int
    base_version: int
    version: int
    updated: bool
    applied: int
    total_weight: float
    update_norm: float
    verdicts: Mapping[str, int]
    clip_bound: float | None = None
    clipped: int = 0


class RoundResult(NamedTuple):
    """`close()`'s result: the part's version and tensors after the round, and its stats."""

    version: int
    tensors: Mapping[str, NDArray[Any]]
    stats: RoundStats


@dataclass(frozen=True, slots=True)
class PartSnapshot:
    """A `PartAggregator` as plain data, for an atomic checkpoint.

    Attributes:
        state: JSON-able: part, version, round state, rule, ledger, open accumulator's meta.
        weights: the part's current tensors (read-only arrays, shared with the aggregator).
        accumulator: the open round's accumulator arrays (copies); empty when no round is open.
    """

    state: Plain
    weights: Mapping[str, NDArray[Any]]
    accumulator: Mapping[str, NDArray[Any]]


class PartAggregator:
    """Aggregates one model part round after round.

    Args:
        part_id: the part (`shared`, `expert-3`, ...).
        layout: the part's layout; every update must match it.
        weights: the part's tensors at `version` (copied; must match `layout`, all finite).
        rule: how a round's updates combine.
        version: the version `weights` are.
        ledger_window: rounds of applied-update keys remembered (see `UpdateLedger`).

    Raises:
        LayoutError: when `weights` do not match `layout`.
        InvalidArgumentError: for a negative version or a bad ledger window.
    """

    def __init__(
        self,
        part_id: str,
        layout: PartLayout,
        weights: PartTensors,
        rule: AggregationRule,
        *,
        version: int = 0,
        ledger_window: int = DEFAULT_WINDOW,
    ) -> None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise InvalidArgumentError(f"{part_id}: version must be an int >= 0, got {version!r}")
        check_layout(weights, layout, f"{part_id} weights")
        self._part = part_id
        self._layout = layout
        self._rule = rule
        self._version = version
        self._weights = _read_only({name: np.array(weights[name]) for name in layout})
        self._ledger = UpdateLedger(ledger_window)
        self._open: int | None = None
        self._last: int | None = None
        self._accumulator: PartAccumulator | None = None
        self._verdicts: Counter[str] = Counter()
        # The open round's assignments (device -> weight cap); None: not checked.
        self._assigned: dict[str, float] | None = None
        # clipped-fedavg only: the part's recent update norms, the open round's bound, and the
        # norms applied in the open round (they join the history when it closes).
        self._history: NormHistory | None = (
            rule.history() if isinstance(rule, ClippedFedAvg) else None
        )
        self._bound: float | None = None
        self._round_norms: list[float] = []

    @property
    def part_id(self) -> str:
        """The part this aggregator owns."""
        return self._part

    @property
    def rule(self) -> AggregationRule:
        """The aggregation rule."""
        return self._rule

    @property
    def version(self) -> int:
        """The current version of the part (what devices must train from)."""
        return self._version

    @property
    def weights(self) -> Mapping[str, NDArray[Any]]:
        """The part's current tensors (read-only arrays)."""
        return MappingProxyType(self._weights)

    @property
    def current_round(self) -> int | None:
        """The open round accepting updates, or None between rounds."""
        return self._open

    @property
    def last_round(self) -> int | None:
        """The newest round ever opened here, or None."""
        return self._last

    @property
    def pending(self) -> int:
        """Updates applied in the open round so far (0 between rounds)."""
        return self._accumulator.count if self._accumulator is not None else 0

    @property
    def pending_weight(self) -> float:
        """Total weight applied in the open round so far (0 between rounds)."""
        return self._accumulator.total_weight if self._accumulator is not None else 0.0

    @property
    def assigned(self) -> Mapping[str, float] | None:
        """The open round's assigned devices and their weight caps (None: not checked)."""
        return None if self._assigned is None else MappingProxyType(self._assigned)

    @property
    def clip_bound(self) -> float | None:
        """The open round's clipping bound (None: no clipping)."""
        return self._bound

    @property
    def norm_history(self) -> tuple[float, ...]:
        """The part's recent update norms (`clipped-fedavg`; empty for other rules)."""
        return self._history.norms if self._history is not None else ()

    def _outlier_limit(self) -> float | None:
        rule = self._rule
        if not isinstance(rule, ClippedFedAvg) or rule.reject_above is None or self._bound is None:
            return None
        return rule.reject_above * self._bound

    @property
    def ledger(self) -> UpdateLedger:
        """The applied-update ledger (read it; mutate it only through `offer`)."""
        return self._ledger

    def open_round(self, round: int, assigned: Mapping[str, float] | None = None) -> bool:
        """Open `round` for updates.

        Replays are harmless: opening a round not newer than the last opened one (the same
        RoundOpened delivered twice, or after a restart) changes nothing.

        Args:
            round: the round the matcher opened.
            assigned: the devices assigned this part in this round, each with the most weight
                its update may carry (the samples its profile says it holds). An update from
                any other device is `rejected/unassigned`, a heavier one `over-weight`. None
                checks neither (callers that do not know the assignment).

        Returns:
            True when the round was opened, False for a replay.

        Raises:
            RoundStateError: when an older round is still open (close it first, since its
                result must be published), or `round` is not an int.
            InvalidArgumentError: when a cap is not a finite number >= 0.
        """
        caps = None if assigned is None else _caps(assigned, self._part)
        if not _is_int_like(round):
            raise RoundStateError(f"{self._part}: round must be an int, got {round!r}")
        round = int(round)
        if self._last is not None and round <= self._last:
            return False
        if self._open is not None:
            raise RoundStateError(
                f"{self._part}: round {self._open} still open, cannot open {round}"
            )
        self._open = self._last = round
        self._assigned = caps
        self._round_norms = []
        rule = self._rule
        if isinstance(rule, ClippedFedAvg) and self._history is not None:
            self._bound = rule.bound(self._history)
            self._accumulator = rule.start_clipped(self._weights, self._bound)
        else:
            self._bound = None
            self._accumulator = rule.start(self._weights)
        self._ledger.advance(round)
        self._verdicts = Counter()
        return True

    def offer(
        self,
        round: int,
        device_id: str,
        tensors: PartTensors,
        weight: float,
        base_version: int,
    ) -> Verdict:
        """Offer one device's update of this part; never raises for a bad update.

        Args:
            round: the round the device trained for.
            device_id: the device that sent it.
            tensors: the device's trained tensors of this part (full weights, not a delta).
            weight: samples the device routed to this expert, or its sample count (shared).
            base_version: the part version the device trained from.

        Returns:
            The verdict (see the module docs for the order of checks and reason codes).
        """
        verdict = self._decide(round, device_id, tensors, weight, base_version)
        if self._open is not None:
            self._verdicts[verdict.label] += 1
        return verdict

    def close(self) -> RoundResult:
        """Close the open round: aggregate, and make a new version if anything was applied.

        Returns:
            The version and tensors after the round (unchanged when nothing with positive
            weight was applied), and the round's stats.

        Raises:
            RoundStateError: when no round is open.
        """
        if self._open is None or self._accumulator is None:
            raise RoundStateError(f"{self._part}: no round open")
        accumulator, round_id, base_version = self._accumulator, self._open, self._version
        result = accumulator.result()
        norm = 0.0
        if result is not None:
            norm = _distance(result, self._weights)
            self._weights = _read_only(result)
            self._version += 1
        stats = RoundStats(
            part=self._part,
            round=round_id,
            base_version=base_version,
            version=self._version,
            updated=result is not None,
            applied=accumulator.count,
            total_weight=accumulator.total_weight,
            update_norm=norm,
            verdicts=dict(self._verdicts),
            clip_bound=self._bound,
            clipped=getattr(accumulator, "clipped", 0),
        )
        if self._history is not None:
            # Sorted: the history, hence the next bound, must not depend on arrival order.
            self._history.extend(sorted(self._round_norms))
        self._open = None
        self._accumulator = None
        self._assigned = None
        self._bound = None
        self._round_norms = []
        return RoundResult(self._version, self.weights, stats)

    def snapshot(self) -> PartSnapshot:
        """Everything needed to continue exactly here after a restart, as plain data."""
        acc_state = self._accumulator.state() if self._accumulator is not None else None
        state: Plain = {
            "format": _FORMAT,
            "part": self._part,
            "version": self._version,
            "open_round": self._open,
            "last_round": self._last,
            "rule": rule_to_plain(self._rule),
            "ledger": self._ledger.to_plain(),
            "verdicts": dict(self._verdicts),
            "accumulator": acc_state.meta if acc_state is not None else None,
            "assigned": dict(self._assigned) if self._assigned is not None else None,
            "history": self._history.to_plain() if self._history is not None else None,
            "clip_bound": self._bound,
            "round_norms": list(self._round_norms),
        }
        return PartSnapshot(
            state=state,
            weights=dict(self._weights),
            accumulator=dict(acc_state.arrays) if acc_state is not None else {},
        )

    @classmethod
    def restore(
        cls,
        snapshot: PartSnapshot,
        layout: PartLayout,
        rule: AggregationRule | None = None,
    ) -> PartAggregator:
        """Rebuild an aggregator from `snapshot()`, e.g. after a JSON round trip of `state`.

        Args:
            snapshot: the checkpoint.
            layout: the part's layout now; the checkpointed weights must match it.
            rule: the rule to continue with; None takes the checkpointed one. It may differ
                from the checkpointed rule between rounds, but not while a round is open (the
                open accumulator belongs to the old rule).

        Returns:
            An aggregator that behaves exactly like the one snapshotted.

        Raises:
            SnapshotError: when the state is malformed or the rule does not fit.
            LayoutError: when the weights do not match `layout`.
        """
        state = snapshot.state
        if state.get("format") != _FORMAT:
            raise SnapshotError(f"part snapshot format {state.get('format')!r}")
        part, version = state.get("part"), state.get("version")
        open_id, last_id = state.get("open_round"), state.get("last_round")
        if not isinstance(part, str) or not _is_int(version):
            raise SnapshotError(f"part snapshot part {part!r} version {version!r}")
        if not (open_id is None or _is_int(open_id)) or not (last_id is None or _is_int(last_id)):
            raise SnapshotError(f"part snapshot rounds {open_id!r}, {last_id!r}")
        if open_id is not None and open_id != last_id:
            raise SnapshotError(f"open round {open_id} is not the last round {last_id}")
        try:
            saved_rule = rule_from_plain(_mapping(state, "rule"))
        except InvalidArgumentError as exc:
            raise SnapshotError(str(exc)) from None
        rule = saved_rule if rule is None else rule
        if open_id is not None and rule.name != saved_rule.name:
            raise SnapshotError(f"round {open_id} is open under {saved_rule.name!r}")
        aggregator = cls(part, layout, snapshot.weights, rule, version=version)
        aggregator._ledger = UpdateLedger.from_plain(_mapping(state, "ledger"))
        aggregator._open, aggregator._last = open_id, last_id
        verdicts = _mapping(state, "verdicts")
        if not all(isinstance(k, str) and _is_int(v) and v >= 0 for k, v in verdicts.items()):
            raise SnapshotError(f"part snapshot verdicts {verdicts!r}")
        aggregator._verdicts = Counter(verdicts)
        _restore_guards(aggregator, state, rule)
        if open_id is not None:
            meta = _mapping(state, "accumulator")
            acc_state = AccumulatorState(dict(meta), snapshot.accumulator)
            if isinstance(rule, ClippedFedAvg):
                accumulator = rule.start_clipped(aggregator._weights, aggregator._bound)
                accumulator.load(acc_state)
                aggregator._accumulator = accumulator
            else:
                aggregator._accumulator = rule.restore(aggregator._weights, acc_state)
        return aggregator

    def _decide(
        self,
        round: int,
        device_id: str,
        tensors: PartTensors,
        weight: float,
        base_version: int,
    ) -> Verdict:
        # The key ends up in the JSON checkpoint, so it must be exactly (int, str): a float or
        # numpy round would serialise but fail to restore.
        if not (_is_int_like(round) and _is_int_like(base_version)) or not (
            isinstance(device_id, str) and device_id
        ):
            return Verdict(
                "rejected", "bad-key", f"round {round!r} device {device_id!r} base {base_version!r}"
            )
        round, base_version = int(round), int(base_version)
        key = UpdateKey(round, device_id, self._part)
        where = f"{device_id}/{self._part} round {round}"
        status = self._ledger.check(key)
        if status == "duplicate":
            return Verdict("duplicate", "", where)
        if status == "stale":
            return Verdict("late", "stale", f"{where}: older than the ledger window")
        if self._last is None or round > self._last:
            return Verdict("rejected", "future-round", f"{where}: last opened {self._last}")
        if round != self._open or self._accumulator is None:
            return Verdict("late", "round-closed", where)
        cap = None
        if self._assigned is not None:
            cap = self._assigned.get(device_id)
            if cap is None:
                return Verdict("rejected", "unassigned", f"{where}: not assigned this part")
        if base_version != self._version:
            reason = "stale" if base_version < self._version else "unknown-version"
            return Verdict("rejected", reason, f"{where}: base {base_version} != {self._version}")
        checked = None
        try:
            if cap is not None and check_weight(weight) > cap:
                return Verdict("rejected", "over-weight", f"{where}: weight {weight} > {cap}")
            if self._history is not None:
                # The delta's norm before clipping: the next rounds' bounds come from these.
                checked = self._accumulator.check(device_id, tensors)
                limit = self._outlier_limit()
                if limit is not None and checked.norm > limit:
                    detail = f"{where}: delta norm {checked.norm:.4g} > {limit:.4g}"
                    return Verdict("rejected", "outlier-norm", detail)
            self._accumulator.add(device_id, checked or tensors, weight)
        except UpdateRejected as exc:
            return Verdict("rejected", exc.reason, f"{where}: {exc.detail}")
        if checked is not None:
            self._round_norms.append(checked.norm)
        self._ledger.record(key)
        return Verdict("applied", "", where)


def _read_only(tensors: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
    # Accumulators hold the weights by reference; read-only arrays make that safe.
    for array in tensors.values():
        array.setflags(write=False)
    return dict(tensors)


def _distance(new: Mapping[str, NDArray[Any]], old: Mapping[str, NDArray[Any]]) -> float:
    return math.sqrt(sum(squared_distance(array, old[name]) for name, array in new.items()))


def _caps(assigned: Mapping[str, float], part: str) -> dict[str, float]:
    caps: dict[str, float] = {}
    for device, cap in assigned.items():
        if (
            not isinstance(device, str)
            or isinstance(cap, bool)
            or not isinstance(cap, int | float | np.integer | np.floating)
            or not math.isfinite(float(cap))
            or cap < 0
        ):
            raise InvalidArgumentError(f"{part}: assigned cap {device!r}: {cap!r}")
        caps[device] = float(cap)
    return caps


def _restore_guards(
    aggregator: PartAggregator, state: Mapping[str, Any], rule: AggregationRule
) -> None:
    """Restore the assignments and the clipping state (absent from older checkpoints)."""
    assigned = state.get("assigned")
    if assigned is not None:
        if not isinstance(assigned, Mapping):
            raise SnapshotError(f"part snapshot assigned {assigned!r}")
        try:
            aggregator._assigned = _caps(assigned, aggregator.part_id)
        except InvalidArgumentError as exc:
            raise SnapshotError(str(exc)) from None
    if not isinstance(rule, ClippedFedAvg):
        return
    history = state.get("history")
    if history is None:
        aggregator._history = rule.history()
    else:
        if not isinstance(history, Mapping):
            raise SnapshotError(f"part snapshot history {history!r}")
        saved = NormHistory.from_plain(history)
        aggregator._history = rule.history(saved.norms)  # the rule's window now
    bound, norms = state.get("clip_bound"), state.get("round_norms", [])
    if bound is not None and not (
        isinstance(bound, int | float)
        and not isinstance(bound, bool)
        and math.isfinite(bound)
        and bound > 0
    ):
        raise SnapshotError(f"part snapshot clip_bound {bound!r}")
    if not isinstance(norms, list | tuple) or not all(
        isinstance(n, int | float) and not isinstance(n, bool) and math.isfinite(n) and n >= 0
        for n in norms
    ):
        raise SnapshotError(f"part snapshot round_norms {norms!r}")
    if aggregator._open is not None:
        aggregator._bound = None if bound is None else float(bound)
        aggregator._round_norms = [float(n) for n in norms]


def _is_int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_int_like(x: object) -> bool:
    # numpy integers are welcome (the simulation computes rounds with numpy); bools are not.
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _mapping(state: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = state.get(key)
    if not isinstance(value, Mapping):
        raise SnapshotError(f"part snapshot {key!r} must be a mapping")
    return value
