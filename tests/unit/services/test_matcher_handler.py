"""The matcher's handler: replayed and live records folded once (watermarks), records on the
wrong topic refused, and the clock advanced after each record."""

from __future__ import annotations

import pytest

from brokers.rebuild import ReplayedRecord
from moe.load import ExpertLoadState
from schemas import encode
from schemas.messages import Message, RoundClosed, RoundOpened
from schemas.topics import Topic, TopicTable
from services.errors import InvalidPayload
from services.handler import InboundRecord
from services.matcher.handler import MatcherHandler
from services.metrics import Outcome, ServiceMetrics
from tests.unit.services.test_matcher_clock import (
    PARTS,
    load_message,
    make_clock,
    part_closed,
    snapshot,
)

TABLE = TopicTable(namespace="t")


class FakeTime:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def inbound(topic: Topic, offset: int, message: Message, partition: int = 0) -> InboundRecord:
    return InboundRecord(
        topic=TABLE.name(topic),
        partition=partition,
        offset=offset,
        key=None,
        message=message,
        raw=encode(message),
    )


def replayed(topic: Topic, offset: int, message: Message, ts: float = 100.0) -> ReplayedRecord:
    return ReplayedRecord(TABLE.name(topic), 0, offset, None, int(ts * 1000), message)


async def test_replayed_records_are_not_folded_again_when_the_group_reads_them() -> None:
    clock = make_clock(wait_for_load=False)
    first = clock.advance(100.0)
    opened = first[0].message
    history = [replayed(Topic.ROUNDS, 0, opened)]
    history += [replayed(Topic.ROUNDS, 1 + i, part_closed(0, p, 0)) for i, p in enumerate(PARTS)]
    metrics = ServiceMetrics("matcher")
    time = FakeTime(100.5)
    handler = MatcherHandler(make_clock(wait_for_load=False), TABLE, metrics, now=time)
    # A profile replayed out of topic order still meets the rounds first.
    newer = snapshot(0, 1, ts=100.2)
    assert handler.restore([replayed(Topic.PROFILES, 7, newer), *history]) == len(PARTS) + 2
    assert handler.clock.open_round == 0
    # The group consumer starts from the beginning: everything up to the replay's end is old.
    for rec in history:
        out = await handler.handle(inbound(Topic.ROUNDS, rec.offset, rec.message))
        assert out == []
    older = snapshot(0, 0, ts=1.0)
    assert await handler.handle(inbound(Topic.PROFILES, 3, older)) == []
    assert metrics.get(Outcome.SKIPPED) == len(history) + 1
    assert handler.clock.profiles() == [newer]
    # The first tick closes round 0 (every part closed in the history).
    (closed,) = await handler.on_tick(100.6)
    assert isinstance(closed.message, RoundClosed)
    assert closed.message.round == 0


async def test_a_live_part_closed_closes_the_round_at_once() -> None:
    time = FakeTime(100.0)
    handler = MatcherHandler(make_clock(), TABLE, ServiceMetrics("matcher"), now=time)
    out = await handler.on_tick(100.0)
    assert isinstance(out[0].message, RoundOpened)
    for i, part in enumerate(PARTS):
        time.now = 100.0 + 0.1 * i  # well inside deadline + 2 graces
        out = await handler.handle(inbound(Topic.ROUNDS, i, part_closed(0, part, 0)))
        assert (out == []) == (i < len(PARTS) - 1)
    (closed,) = out
    assert isinstance(closed.message, RoundClosed)
    assert closed.message.reason == "parts-closed"
    assert closed.message.timestamp == time.now


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        (Topic.PROFILES, part_closed(0, "shared", 0)),
        (Topic.ROUNDS, load_message(ExpertLoadState.empty(4), 0)),
        (Topic.EXPERT_LOAD, snapshot(1, 1)),
    ],
)
async def test_a_message_on_the_wrong_topic_is_refused_once(topic: Topic, message: Message) -> None:
    handler = MatcherHandler(make_clock(), TABLE, ServiceMetrics("matcher"), now=FakeTime(1.0))
    record = inbound(topic, 5, message)
    with pytest.raises(InvalidPayload):
        await handler.handle(record)
    # Dead-lettered and committed by the runtime: met again (redelivery), it is old news.
    assert await handler.handle(record) == []
    assert handler.clock.profiles() == []
    assert handler.clock.versions == dict.fromkeys(PARTS, 0)


async def test_a_failing_clock_is_counted_and_retried_on_the_next_tick() -> None:
    metrics = ServiceMetrics("matcher")
    handler = MatcherHandler(make_clock(), TABLE, metrics, now=FakeTime(100.0))
    working = handler.clock.advance

    def broken(now: float) -> list[object]:
        raise ValueError("planner bug")

    handler.clock.advance = broken  # type: ignore[method-assign,assignment]
    assert await handler.on_tick(100.0) == []
    assert metrics.get(Outcome.HANDLER_ERRORS) == 1
    handler.clock.advance = working  # type: ignore[method-assign]
    (opened, *_) = await handler.on_tick(100.1)
    assert isinstance(opened.message, RoundOpened)
    assert metrics.get(Outcome.HANDLER_ERRORS) == 1
