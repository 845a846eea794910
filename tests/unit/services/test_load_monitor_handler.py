"""The load monitor's handler without brokers: routing, the ExpertLoad it emits, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe.wire import expert_load_message, expert_load_state
from schemas import encode
from schemas.messages import Assignment, ExpertLoad, Message, PartClosed
from schemas.topics import Topic, TopicTable
from services.checkpoint import CheckpointStore
from services.errors import InvalidPayload
from services.handler import InboundRecord
from services.load_monitor.app import LoadMonitorHandler
from services.load_monitor.restore import choose_start
from services.load_monitor.state import LoadMonitor
from services.runtime.delivery import encode_outbound
from tests.unit.services.test_load_monitor_state import E, in_order, reference, same, version

TABLE = TopicTable("unit")


def record(message: Message, topic: Topic, offset: int = 0) -> InboundRecord:
    return InboundRecord(
        topic=TABLE.name(topic), partition=0, offset=offset, key=b"k", message=message,
        raw=encode(message), timestamp_ms=1,
    )  # fmt: skip


def topic_of(message: Message) -> Topic:
    return Topic.MODEL if message.TYPE == "part-version" else Topic.ROUNDS


def handler(store: CheckpointStore | None = None) -> LoadMonitorHandler:
    return LoadMonitorHandler(LoadMonitor(E), TABLE, store=store, namespace="ns", clock=lambda: 5.0)


async def test_every_closed_round_is_published_whole_under_the_key_load() -> None:
    h = handler()
    outputs = []
    for i, message in enumerate(in_order()):
        outputs += await h.handle(record(message, topic_of(message), i))
    assert [o.message.round for o in outputs] == [0, 1, 2]
    for out, want in zip(outputs, reference(), strict=True):
        encode_outbound(out, TABLE)  # valid on the wire
        assert (out.topic, out.key) == (Topic.EXPERT_LOAD, "load")
        assert isinstance(out.message, ExpertLoad)
        assert out.message.device_id == "load-monitor"
        assert out.message.message_id == f"load:{out.message.round}"
        assert out.message == expert_load_message(
            want, message_id=out.message.message_id, timestamp=5.0, round=out.message.round,
            device_id="load-monitor",
        )  # fmt: skip
        assert same(expert_load_state(out.message), want)
    assert h.published == (2, 5.0)
    assert h.notes["expert_load_published"] == 3


async def test_wrong_inputs_are_refused_and_part_closed_is_noted_without_output() -> None:
    h = handler()
    closed = PartClosed(
        message_id="p", device_id="aggregator", round=1, timestamp=1.0,
        part="expert-1", version=1, applied=1, reason="quorum",
    )  # fmt: skip
    assert await h.handle(record(closed, Topic.ROUNDS)) == []
    assert h.notes["part_close_noted"] == 1
    assert h.monitor.closes == {1: {1: 1}}  # round 1's close waits for expert-1's close
    assignment = Assignment(
        message_id="a", device_id="dev-00001", round=1, timestamp=1.0, experts=(1,),
        deadline=2.0, model_versions={},
    )  # fmt: skip
    for message, topic in (
        (assignment, Topic.ROUNDS),
        (version("expert-1", 1, 1, 1.0), Topic.ROUNDS),
        (closed, Topic.MODEL),
    ):
        with pytest.raises(InvalidPayload, match="unexpected_message"):
            await h.handle(record(message, topic))
    with pytest.raises(InvalidPayload, match="invalid_input"):
        await h.handle(record(version(f"expert-{E}", 1, 1, 1.0), Topic.MODEL))


async def test_checkpoints_hold_the_state_and_are_written_only_after_a_change(
    tmp_path: Path,
) -> None:
    store = CheckpointStore(tmp_path / "ns" / "load-monitor.ckpt")
    h = handler(store)
    await h.checkpoint()
    assert store.load() is None  # nothing happened yet
    events = in_order()
    for i, message in enumerate(events):
        await h.handle(record(message, topic_of(message), i))
    await h.checkpoint()
    first = store.path.stat().st_mtime_ns
    await h.handle(record(events[-1], topic_of(events[-1]), len(events)))  # a redelivery
    await h.checkpoint()
    assert store.path.stat().st_mtime_ns == first
    data = store.load()
    assert data is not None
    assert data["published"] == [2, 5.0]
    changelog = [
        expert_load_message(h.monitor.load, message_id="load:2", timestamp=5.0, round=2,
                            device_id="load-monitor"),
    ]  # fmt: skip
    start = choose_start(data, changelog, num_experts=E, alpha=0.5, close_wait_s=30.0)
    assert same(start.monitor.load, h.monitor.load)
    assert start.published == (2, 5.0)
