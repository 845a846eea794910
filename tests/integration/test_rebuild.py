"""`replay_topics` against Tansu: whole topics from the beginning to the end offsets."""

from __future__ import annotations

import pytest

from brokers.kafka import KafkaProducer
from brokers.rebuild import replay_topics
from brokers.settings import BrokerSettings
from schemas import encode
from schemas.messages import DeviceStatus, RoundClosed
from schemas.topics import Topic

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _status(i: int) -> DeviceStatus:
    return DeviceStatus(
        message_id=f"s-{i}", device_id=f"dev-{i % 5}", round=i, timestamp=1.0, online=bool(i % 2)
    )


async def test_replay_reads_every_partition_to_the_end(broker_env: BrokerSettings) -> None:
    table = broker_env.topic_table()
    # Every send is queued before any ack is awaited, so records share batches (which is what
    # Tansu's end offsets get wrong).
    async with KafkaProducer(broker_env, client_id="t") as producer:
        acks = [
            await producer.send(
                table.name(Topic.TELEMETRY), f"dev-{i % 5}".encode(), encode(_status(i))
            )
            for i in range(40)
        ]
        for i in range(3):
            closed = RoundClosed(
                message_id=f"r-{i}",
                device_id="matcher",
                round=i,
                timestamp=1.0,
                reason="quorum",
                parts_closed=9,
            )
            acks.append(await producer.send(table.name(Topic.ROUNDS), b"round", encode(closed)))
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
    for a, b in zip(replay.records, replay.records[1:], strict=False):
        if (a.topic, a.partition) == (b.topic, b.partition):
            assert a.offset < b.offset


async def test_replay_of_empty_and_missing_topics(broker_env: BrokerSettings) -> None:
    replay = await replay_topics(broker_env, [Topic.PROFILES, "no-such-topic-here"], timeout_s=20)
    assert replay.records == []
    assert replay.skipped == 0


async def test_latest_per_key_keeps_each_keys_last_record(broker_env: BrokerSettings) -> None:
    table = broker_env.topic_table()
    async with KafkaProducer(broker_env, client_id="t") as producer:
        acks = [
            await producer.send(
                table.name(Topic.TELEMETRY), f"dev-{i % 5}".encode(), encode(_status(i))
            )
            for i in range(40)
        ]
        closed = RoundClosed(
            message_id="r-0",
            device_id="matcher",
            round=0,
            timestamp=1.0,
            reason="quorum",
            parts_closed=9,
        )
        for _ in range(2):  # the same record twice on a topic that is not reduced
            acks.append(await producer.send(table.name(Topic.ROUNDS), b"round", encode(closed)))
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
    for a, b in zip(replay.records, replay.records[1:], strict=False):
        if (a.topic, a.partition) == (b.topic, b.partition):
            assert a.offset < b.offset
