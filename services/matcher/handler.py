"""`MatcherHandler`: the round clock bound to the runtime (records in, round events out).

Every record, replayed at start (`restore`) or consumed live (`handle`), is folded into the
clock once: `Watermarks` skip the records the group consumer meets again after the replay. After
each live record and on every tick the clock is advanced, so a round closes as soon as its last
`PartClosed` is read, and opens as soon as its rule holds (or at the next tick).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from brokers.rebuild import ReplayedRecord
from schemas.messages import (
    Assignment,
    ExpertLoad,
    Message,
    PartClosed,
    ProfileSnapshot,
    RoundClosed,
    RoundOpened,
)
from schemas.topics import Topic, TopicTable
from services.errors import InvalidPayload
from services.handler import InboundRecord, Outbound
from services.matcher.clock import RoundClock
from services.metrics import Outcome, ServiceMetrics
from services.watermarks import Watermarks

log = logging.getLogger(__name__)

INPUTS: tuple[Topic, ...] = (Topic.ROUNDS, Topic.EXPERT_LOAD, Topic.PROFILES)
# Replay order: round events first, so the load and the profiles meet the rounds they follow;
# then the assignments, only to learn which devices of the open round got theirs.
REPLAYED: tuple[Topic, ...] = (*INPUTS, Topic.ASSIGNMENTS)
# The clock keeps only the latest load and each device's latest profile, and the assignments
# are read for the open round only (a device's latest): the replay need not hold the rest.
LATEST_PER_KEY: tuple[Topic, ...] = (Topic.EXPERT_LOAD, Topic.PROFILES, Topic.ASSIGNMENTS)
_ACCEPTS: dict[Topic, tuple[type[Message], ...]] = {
    Topic.ROUNDS: (RoundOpened, PartClosed, RoundClosed),
    Topic.EXPERT_LOAD: (ExpertLoad,),
    Topic.PROFILES: (ProfileSnapshot,),
}


STARVED_ROUNDS_ALARM = 3
"""Starved rounds in a row after which the matcher says the deadline cannot be met."""


class MatcherHandler:
    """Feeds the `RoundClock` and returns what it says to produce."""

    def __init__(
        self,
        clock: RoundClock,
        table: TopicTable,
        metrics: ServiceMetrics,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self._metrics = metrics
        self._now = now
        self._accepts = {table.name(t): types for t, types in _ACCEPTS.items()}
        self._order = {table.name(t): i for i, t in enumerate(REPLAYED)}
        self._assignments = table.name(Topic.ASSIGNMENTS)
        self._watermarks = Watermarks()

    def restore(self, records: Sequence[ReplayedRecord]) -> int:
        """Fold replayed history (no outputs); returns the records folded.

        Records the clock refuses were dead-lettered when first consumed: logged and passed.
        Then the clock resumes the open round (`RoundClock.resume`) knowing who was assigned.
        """
        folded = 0
        ordered = sorted(records, key=lambda r: self._order.get(r.topic, len(self._order)))
        assigned: set[str] = set()
        for rec in ordered:
            if rec.topic == self._assignments:
                message = rec.message
                if isinstance(message, Assignment) and message.round == self.clock.open_round:
                    assigned.add(message.device_id)
                continue
            if self._watermarks.seen(rec.topic, rec.partition, rec.offset):
                continue
            self._watermarks.note(rec.topic, rec.partition, rec.offset)
            try:
                self._check_type(rec.topic, rec.message)
                self.clock.apply(rec.message, at=rec.timestamp_ms / 1000.0)
            except InvalidPayload as exc:
                log.warning("matcher: replayed %s/%d@%d refused: %s", *_where(rec), exc)
                continue
            folded += 1
        log.info("matcher: resume: %s", self.clock.resume(assigned, self._now()))
        return folded

    async def handle(self, record: InboundRecord) -> list[Outbound]:
        """Fold one record, then advance the clock."""
        if self._watermarks.seen(record.topic, record.partition, record.offset):
            self._metrics.inc(Outcome.SKIPPED)  # folded from the replay already
            return []
        try:
            self._check_type(record.topic, record.message)
            outputs = self.clock.apply(record.message, at=self._now())
        finally:
            # Folded or refused for good (dead letter): either way not to be folded again.
            self._watermarks.note(record.topic, record.partition, record.offset)
        if outputs:
            log.info(
                "matcher: round %d read back; %d assignments out",
                record.message.round,
                len(outputs),
            )
        return outputs + self._advance(self._now())

    async def on_tick(self, now: float) -> list[Outbound]:
        """Close or open a round when due."""
        return self._advance(now)

    def _check_type(self, topic: str, message: Message) -> None:
        accepted = self._accepts.get(topic, ())
        if not isinstance(message, accepted):
            raise InvalidPayload("unexpected-message", f"{type(message).__name__} on {topic}")

    def _advance(self, now: float) -> list[Outbound]:
        try:
            outputs = self.clock.advance(now)
        except Exception:
            # A planner failure (a bug) must not dead-letter the record in hand; it is counted
            # and the next tick retries, since new profiles or loads may change the plan.
            self._metrics.inc(Outcome.HANDLER_ERRORS)
            log.exception("matcher: advancing the round clock failed")
            return []
        for out in outputs:
            _log_output(out, self.clock.last_opening)
            if isinstance(out.message, RoundClosed):
                self._warn_if_starved()
        return outputs

    def _warn_if_starved(self) -> None:
        starved = self.clock.starved_rounds
        if starved == STARVED_ROUNDS_ALARM or (
            starved and starved % (10 * STARVED_ROUNDS_ALARM) == 0
        ):
            log.error(
                "matcher: %d rounds in a row closed with devices assigned and no update "
                "applied: the round deadline (%.3f s of wall time) is shorter than the bus's "
                "own round trip (assignment out, training, update back through the gateway "
                "and Kafka). Raise the deadline or the time scale (FEDMOE_SCENARIO_TIME_SCALE).",
                starved,
                self.clock.config.deadline_wall_s,
            )


def _where(rec: ReplayedRecord) -> tuple[str, int, int]:
    return rec.topic, rec.partition, rec.offset


def _log_output(out: Outbound, opening: str) -> None:
    message = out.message
    if out.topic is not Topic.ROUNDS:
        return
    if isinstance(message, RoundOpened):
        log.info(
            "matcher: opened round %d (%s): %d devices, deadline in %.1fs, expected %s",
            message.round,
            opening,
            message.devices,
            message.deadline - message.timestamp,
            dict(message.expected_parts),
        )
    elif isinstance(message, RoundClosed):
        log.info(
            "matcher: closed round %d (%s, %d parts closed), versions %s",
            message.round,
            message.reason,
            message.parts_closed,
            dict(message.model_versions),
        )
