"""`replay_topics` against Tansu: whole topics from the beginning to the end offsets."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable

import pytest

from brokers.kafka import KafkaProducer, RecordAck
from brokers.rebuild import ReplayedRecord, replay_topics
from brokers.settings import BrokerSettings
from schemas import encode
from schemas.messages import DeviceStatus, RoundClosed
from schemas.topics import Topic, TopicTable

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _status(i: int) -> DeviceStatus:
    return DeviceStatus(
        message_id=f"s-{i}", device_id=f"dev-{i % 5}", round=i, timestamp=1.0, online=bool(i % 2)
    )


def _closed(i: int) -> RoundClosed:
    return RoundClosed(
        message_id=f"r-{i}", device_id="matcher", round=i, timestamp=1.0, reason="quorum",
        parts_closed=9,
    )  # fmt: skip


async def _send_statuses(producer: KafkaProducer, table: TopicTable) -> list[Awaitable[RecordAck]]:
    """40 statuses of 5 devices (dev-k: i = k, k + 5, ..., k + 35), every send queued before
    any ack is awaited, so records share batches (which is what Tansu's end offsets get
    wrong)."""
    return [
        await producer.send(
            table.name(Topic.TELEMETRY), f"dev-{i % 5}".encode(), encode(_status(i))
        )
        for i in range(40)
    ]


def _assert_offset_order(records: list[ReplayedRecord]) -> None:
    for a, b in itertools.pairwise(records):
        if (a.topic, a.partition) == (b.topic, b.partition):
            assert a.offset < b.offset


async def test_replay_reads_every_partition_to_the_end(broker_env: BrokerSettings) -> None:
    table = broker_env.topic_table()
    async with KafkaProducer(broker_env, client_id="t") as producer:
        acks = await _send_statuses(producer, table)
        for i in range(3):
            acks.append(await producer.send(table.name(Topic.ROUNDS), b"round", encode(_closed(i))))
        acks.append(await producer.send(table.name(Topic.ROUNDS), b"round", b"\x00garbage"))
        for ack in acks:
            await ack

    replay = await replay_topics(
        broker_env, [Topic.TELEMETRY, Topic.ROUNDS, Topic.PROFILES], timeout_s=30
    )
    assert replay.skipped == 1
    statuses = [r.message for r in replay.records if r.topic == table.name(Topic.TELEMETRY)]
    assert sorted(m.message_id for m in statuses) == sorted(f"s-{i}" for i in range(40))
    rounds = [r.message.round for r in replay.records if r.topic == table.name(Topic.ROUNDS)]
    assert rounds == [0, 1, 2]  # one partition: offset order
    _assert_offset_order(replay.records)


async def test_replay_of_empty_and_missing_topics(broker_env: BrokerSettings) -> None:
    replay = await replay_topics(broker_env, [Topic.PROFILES, "no-such-topic-here"], timeout_s=20)
    assert replay.records == []
    assert replay.skipped == 0


async def test_latest_per_key_keeps_each_keys_last_record(broker_env: BrokerSettings) -> None:
    table = broker_env.topic_table()
    async with KafkaProducer(broker_env, client_id="t") as producer:
        acks = await _send_statuses(producer, table)
        for _ in range(2):  # the same record twice on a topic that is not reduced
            acks.append(await producer.send(table.name(Topic.ROUNDS), b"round", encode(_closed(0))))
        for ack in acks:
            await ack

    replay = await replay_topics(
        broker_env,
        [Topic.TELEMETRY, Topic.ROUNDS],
        timeout_s=30,
        latest_per_key=[Topic.TELEMETRY],
    )
    statuses = [r for r in replay.records if r.topic == table.name(Topic.TELEMETRY)]
    # dev-k's statuses are i = k, k + 5, ..., k + 35: the last one is 35 + k.
    assert sorted(r.message.message_id for r in statuses) == [f"s-{35 + k}" for k in range(5)]
    assert len([r for r in replay.records if r.topic == table.name(Topic.ROUNDS)]) == 2
    _assert_offset_order(replay.records)
