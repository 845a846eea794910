"""`AggregatorHandler`: the aggregator's state machine over `updates` records (no broker).

Per record (the round protocol, step 3):

| input                                   | outputs                                              |
|-----------------------------------------|------------------------------------------------------|
| marker `RoundOpened(r)`, key = part     | `PartVersion` v0 first if the part is new; closes an |
|                                         | older round still open (`deadline`); opens r with    |
|                                         | the marker's assigned devices and weight caps;       |
|                                         | closes at once when 0 devices are expected (`quorum`)|
| marker replayed (r not newer)           | nothing                                              |
| `PartUpdate` of an opened round         | `UpdateAck` with the verdict; `PartVersion` +        |
|                                         | `PartClosed` (`quorum`) when the applied count       |
|                                         | reaches the marker's `expected_parts[part]`          |
| `PartUpdate` sent after the deadline    | `UpdateAck` late/`after-deadline` (Kafka timestamp   |
|                                         | = the gateway's receive time > round deadline)       |
| `PartUpdate` of an unknown part         | `UpdateAck` rejected/`unknown-part`                  |
| `PartUpdate` of a device not assigned   | `UpdateAck` rejected/`unassigned`; over its cap:     |
| the part in r (per the marker)          | rejected/`over-weight` (`PartAggregator`)            |
| `PartUpdate` of a round never opened    | dead letter `future-round` (see below)               |
| other message, key ≠ part, bad marker   | dead letter                                          |

and on a tick, every held part whose round is still open at `deadline + grace` closes with
reason `deadline`.

Why a future-round update is dead-lettered rather than retried: the matcher produces a round's
markers, and has them acknowledged, before it sends a single assignment, and a part's marker
and updates share the part's key, hence its partition. So a marker always precedes every update
of its round in that partition: an update for a round this part never opened will not find its
marker later, and retrying it (`RetryLater`) would stall the partition for good. It comes from a
device that invents rounds or from lost aggregator state; either way an operator must see it.

Duplicates are judged before lateness, so a device resending an applied update after the
deadline hears `duplicate` (it counted), as `PartAggregator` does for closed rounds.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from moe.aggregation import AggregationRule, PartAggregator, SnapshotError, UpdateKey, Verdict
from moe.tensors import PartLayout, PartTensors
from schemas.messages import PartUpdate, RoundOpened
from services.aggregator.outputs import part_closed, part_version, update_ack
from services.aggregator.part import PartState, RoundTerms
from services.aggregator.store import PartStore
from services.checkpoint import CheckpointError
from services.errors import InvalidPayload, RetryLater
from services.handler import InboundRecord, Outbound

log = logging.getLogger(__name__)


class AggregatorHandler:
    """Holds the parts of the partitions this instance owns; see the module docs.

    Args:
        layout: every part's layout (the model's).
        initial: every part's version-0 tensors.
        layout_version: the model's part layout version (carried by `PartVersion`).
        rule: the aggregation rule of new rounds.
        store: the shared per-part checkpoint files.
        grace_s: a round still short of its quorum closes at its deadline + this.
        ledger_window: rounds of applied-update keys a new part remembers.
        clock: wall clock for message timestamps.
        name: this instance's name in logs.
    """

    def __init__(
        self,
        *,
        layout: Mapping[str, PartLayout],
        initial: Mapping[str, PartTensors],
        layout_version: int,
        rule: AggregationRule,
        store: PartStore,
        grace_s: float,
        ledger_window: int,
        clock: Callable[[], float] = time.time,
        name: str = "aggregator",
    ) -> None:
        missing = sorted(set(layout) - set(initial))
        if missing:
            raise ValueError(f"no initial weights for {missing}")
        self._layout = layout
        self._initial = initial
        self._layout_version = layout_version
        self._rule = rule
        self._store = store
        self._grace_s = grace_s
        self._ledger_window = ledger_window
        self._clock = clock
        self.name = name
        self._parts: dict[str, PartState] = {}
        self._dirty: set[str] = set()
        self.stats: Counter[str] = Counter()

    @property
    def parts(self) -> Mapping[str, PartState]:
        """The parts held in memory now (the owned ones met or loaded so far)."""
        return self._parts

    # -- Handler -------------------------------------------------------------------------------

    async def handle(self, record: InboundRecord) -> Sequence[Outbound]:
        """One `updates` record: a round marker or a part update (see the module docs)."""
        message = record.message
        part = _key(record)
        if isinstance(message, RoundOpened):
            return self._on_marker(record, message, part)
        if isinstance(message, PartUpdate):
            return self._on_update(record, message, part)
        raise InvalidPayload("unexpected-message", f"{message.TYPE} on the updates topic")

    async def on_tick(self, now: float) -> Sequence[Outbound]:
        """Close every held part whose open round passed its deadline + grace."""
        out: list[Outbound] = []
        for part in sorted(self._parts):
            state = self._parts[part]
            if state.terms is None or now <= state.terms.deadline + self._grace_s:
                continue
            fresh = self._held(part, None)  # another instance may have closed it meanwhile
            if (
                fresh is not None
                and fresh.terms is not None
                and now > fresh.terms.deadline + self._grace_s
            ):
                out += self._close(fresh, "deadline")
        return out

    async def checkpoint(self) -> None:
        """Write every part changed since the last checkpoint (one atomic file each)."""
        for part in sorted(self._dirty):
            state = self._parts.get(part)
            if state is not None:
                self._store.save(part, state.to_plain())
            self._dirty.discard(part)

    async def on_partitions_revoked(self, partitions: frozenset[tuple[str, int]]) -> None:
        """Drop the parts of lost partitions without writing them: the next owner continues
        from their checkpoint, and the runtime does not commit what was not checkpointed."""
        lost = {p for _, p in partitions}
        for part in sorted(self._parts):
            if self._parts[part].partition in lost:
                if part in self._dirty:
                    log.warning(
                        "%s: %s revoked before its checkpoint; redone by its next owner",
                        self.name,
                        part,
                    )
                self._drop(part)

    async def on_partitions_assigned(self, partitions: frozenset[tuple[str, int]]) -> None:
        """Load the checkpointed parts of gained partitions, so their deadlines are kept even
        when no record of theirs comes any more."""
        gained = {p for _, p in partitions}
        for part in self._store.parts():
            if part in self._parts or part not in self._layout:
                continue
            try:
                state = self._load(part)
            except CheckpointError:
                log.exception("%s: cannot load %s; retried when its records come", self.name, part)
                continue
            if state is not None and state.partition in gained:
                self._parts[part] = state
                log.info(
                    "%s: took over %s at version %d (round %s open)",
                    self.name,
                    part,
                    state.aggregator.version,
                    state.open_round,
                )
            else:
                self._store.forget(part)

    # -- records -------------------------------------------------------------------------------

    def _on_marker(
        self, record: InboundRecord, marker: RoundOpened, part: str | None
    ) -> list[Outbound]:
        if part is None or part not in self._layout:
            raise InvalidPayload("bad-marker-key", f"key {record.key!r} is no part of the model")
        expected = marker.expected_parts.get(part)
        if expected is None:
            raise InvalidPayload("marker-without-part", f"round {marker.round} omits {part}")
        out: list[Outbound] = []
        state = self._held(part, record.partition)
        if state is None:
            state = self._create(part, record.partition)
            out.append(self._version_of(state, marker.round, 0, 0.0))
        open_round = state.open_round
        if open_round is not None and open_round < marker.round:
            # The matcher gave up on that round (deadline + 2 grace) before this part closed.
            out += self._close(state, "deadline")
        assigned: dict[str, float] | None = {d: float(c) for d, c in marker.assigned.items()}
        if expected > 0 and not marker.assigned:
            # A matcher that does not name the assigned devices (an older version): the part's
            # updates cannot be checked against them this round.
            log.warning(
                "%s: round %d of %s names no assigned devices: not checked",
                self.name,
                marker.round,
                part,
            )
            assigned = None
        if not state.aggregator.open_round(marker.round, assigned):
            return out  # a replayed marker
        state.terms = RoundTerms(marker.deadline, expected)
        self._dirty.add(part)
        wanted = marker.model_versions.get(part)
        if wanted is not None and wanted != state.aggregator.version:
            log.warning(
                "%s: round %d of %s: devices train from v%d, the part is at v%d",
                self.name,
                marker.round,
                part,
                wanted,
                state.aggregator.version,
            )
        if expected == 0:
            out += self._close(state, "quorum")
        return out

    def _on_update(
        self, record: InboundRecord, update: PartUpdate, part: str | None
    ) -> list[Outbound]:
        payload = update.payload
        if part is None or payload.part != part:
            raise InvalidPayload("wrong-key", f"{update.message_id}: key {record.key!r}")
        if part not in self._layout:
            verdict = Verdict("rejected", "unknown-part", f"no part {part!r} in the model")
            return [self._ack(update, verdict)]
        state = self._held(part, record.partition)
        last = state.aggregator.last_round if state is not None else None
        if state is None or last is None or update.round > last:
            raise InvalidPayload(
                "future-round", f"{update.message_id}: round {update.round}, last opened {last}"
            )
        verdict = self._judge(state, update, record.timestamp_ms)
        self._dirty.add(part)
        out = [self._ack(update, verdict)]
        terms = state.terms
        if (
            verdict.status == "applied"
            and terms is not None
            and state.aggregator.pending >= terms.expected
        ):
            out += self._close(state, "quorum")
        return out

    def _judge(self, state: PartState, update: PartUpdate, timestamp_ms: int) -> Verdict:
        aggregator, payload = state.aggregator, update.payload
        terms = state.terms
        if (
            terms is not None
            and update.round == state.open_round
            and timestamp_ms > 0
            and timestamp_ms / 1000.0 > terms.deadline
            and not aggregator.ledger.seen(UpdateKey(update.round, update.device_id, payload.part))
        ):
            late_s = timestamp_ms / 1000.0 - terms.deadline
            return Verdict("late", "after-deadline", f"{update.message_id}: {late_s:.3f}s late")
        return aggregator.offer(
            update.round, update.device_id, payload.tensors, payload.weight, payload.base_version
        )

    def _ack(self, update: PartUpdate, verdict: Verdict) -> Outbound:
        self.stats[f"verdict/{verdict.label}"] += 1
        if verdict.status != "applied":
            log.debug("%s: %s %s", self.name, verdict.label, verdict.detail)
        return update_ack(update, verdict, self._clock())

    # -- parts ---------------------------------------------------------------------------------

    def _close(self, state: PartState, reason: str) -> list[Outbound]:
        result = state.aggregator.close()
        state.terms = None
        self._dirty.add(state.part_id)
        stats = result.stats
        self.stats[f"closed/{reason}"] += 1
        log.info(
            "%s: closed %s round %d (%s): v%d, %d applied, weight %.1f",
            self.name,
            stats.part,
            stats.round,
            reason,
            stats.version,
            stats.applied,
            stats.total_weight,
        )
        return [
            self._version_of(state, stats.round, stats.applied, stats.total_weight),
            part_closed(
                part=stats.part,
                round_=stats.round,
                version=stats.version,
                applied=stats.applied,
                reason=reason,
                tensors=state.aggregator.weights,
                now=self._clock(),
            ),
        ]

    def _version_of(
        self, state: PartState, round_: int, contributors: int, samples: float
    ) -> Outbound:
        aggregator = state.aggregator
        return part_version(
            part=aggregator.part_id,
            version=aggregator.version,
            round_=round_,
            tensors=aggregator.weights,
            layout_version=self._layout_version,
            contributors=contributors,
            samples=samples,
            now=self._clock(),
        )

    def _held(self, part: str, partition: int | None) -> PartState | None:
        """The part's latest state: in memory unless another instance wrote it since, else
        from its checkpoint; None when it has none. `partition` records where it lives."""
        state = self._parts.get(part)
        if state is not None and part not in self._dirty and self._store.changed(part):
            # Never act on a copy another owner has advanced: its file is the truth.
            log.warning("%s: %s was checkpointed by another instance; reloading", self.name, part)
            self.stats["reloaded"] += 1
            self._drop(part)
            state = None
        if state is None:
            try:
                state = self._load(part)
            except CheckpointError as exc:
                # Acting without the part's state would lose it: wait for the file to be fixed.
                raise RetryLater(str(exc)) from exc
            if state is None:
                return None
            self._parts[part] = state
        if partition is not None and state.partition != partition:
            state.partition = partition
            self._dirty.add(part)
        return state

    def _load(self, part: str) -> PartState | None:
        data = self._store.load(part)
        if data is None:
            return None
        try:
            return PartState.from_plain(data, self._layout[part], self._rule)
        except SnapshotError as exc:
            raise CheckpointError(f"{self._store.path(part)}: {exc}") from exc

    def _create(self, part: str, partition: int) -> PartState:
        aggregator = PartAggregator(
            part,
            self._layout[part],
            self._initial[part],
            self._rule,
            version=0,
            ledger_window=self._ledger_window,
        )
        state = PartState(aggregator, partition)
        self._parts[part] = state
        self._dirty.add(part)
        self.stats["created"] += 1
        log.info("%s: created %s at version 0", self.name, part)
        return state

    def _drop(self, part: str) -> None:
        self._parts.pop(part, None)
        self._dirty.discard(part)
        self._store.forget(part)


def _key(record: InboundRecord) -> str | None:
    if record.key is None:
        return None
    try:
        return record.key.decode("utf-8")
    except UnicodeDecodeError:
        return None
