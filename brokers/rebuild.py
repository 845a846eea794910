"""Read whole topics from the beginning to their current end: how a service rebuilds its state
at start-up (not the replay of recorded fleet traffic, which is `recording/`).

A service whose state is a fold of topics (its own changelog, such as the profiler's compacted
`profiles`, or the matcher's `rounds`) reads them once at start with `replay_topics` before it
starts consuming in its group. The reader joins no group and commits nothing: it assigns every
partition itself, notes the end offsets at the start and stops when it reached all of them, so
records produced meanwhile are left to the group consumer that starts afterwards.

Records that do not decode are skipped and counted (they were dead-lettered when first read).
A message sent as chunks (`schemas.chunks`) is returned whole, at the offset of its last chunk;
one whose chunks do not all lie before the end is left to the group consumer (which resumes at
its first chunk: the runtime never commits past one).

A topic named in `latest_per_key` is reduced as it is read to the last record of each key (per
partition): what a fold that keeps only each key's latest value needs (a device's latest
profile, its latest assignment). The replay then holds and decodes O(keys) records, not the
topic's whole history, which grows with every round while Tansu does not compact it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from brokers.kafka import MAX_RECORD_BYTES, _stop_quietly, kafka_errors
from brokers.settings import BrokerSettings
from schemas import decode
from schemas.chunks import Reassembler
from schemas.errors import SchemaError
from schemas.messages import Message, MessageChunk
from schemas.topics import Topic

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReplayedRecord:
    """One decoded record of a replayed topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int
    message: Message


@dataclass(frozen=True, slots=True)
class Replay:
    """What `replay_topics` read: records in per-partition offset order, partitions in turn."""

    records: list[ReplayedRecord]
    skipped: int  # records that did not decode


async def replay_topics(
    broker: BrokerSettings,
    topics: Sequence[Topic | str],
    *,
    timeout_s: float = 30.0,
    client_id: str = "replay",
    batch: int = 1000,
    latest_per_key: Collection[Topic | str] = (),
) -> Replay:
    """Every record of `topics` from the beginning up to their end offsets at call time.

    Args:
        broker: where Kafka is and the namespace that resolves logical topics.
        topics: logical `Topic`s or concrete names; a topic that does not exist reads as empty.
        timeout_s: bound on the whole replay.
        client_id: Kafka client id (logs).
        batch: records per fetch.
        latest_per_key: topics of which only the last record of each key is returned (records
            without a key are all kept).

    Raises:
        BrokerError: Kafka failed or the replay did not finish within `timeout_s`.
    """
    table = broker.topic_table()
    names = [table.name(t) if isinstance(t, Topic) else t for t in topics]
    reduced = {table.name(t) if isinstance(t, Topic) else t for t in latest_per_key}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers(),
        client_id=client_id,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=int(broker.request_timeout_s * 1000),
        max_partition_fetch_bytes=MAX_RECORD_BYTES,
        fetch_max_bytes=4 * MAX_RECORD_BYTES,
        **broker.kafka_security(),
    )
    records: list[ReplayedRecord] = []
    latest: dict[tuple[str, int, bytes], ConsumerRecord[bytes, bytes]] = {}
    skipped = 0
    chunks = Reassembler()

    def keep(r: ConsumerRecord[bytes, bytes]) -> None:
        nonlocal skipped
        try:
            message: Message | None = decode(r.value or b"")
            if isinstance(message, MessageChunk):
                assembled = chunks.add(message, 0.0)
                message = None if assembled is None else assembled.message
        except SchemaError:
            skipped += 1
            return
        if message is None:
            return
        records.append(
            ReplayedRecord(r.topic, r.partition, r.offset, r.key, r.timestamp or 0, message)
        )

    try:
        async with kafka_errors(f"replay {names}", timeout_s):
            await consumer.start()
            existing = await consumer.topics()
            tps = [
                TopicPartition(name, p)
                for name in names
                if name in existing
                for p in sorted(consumer.partitions_for_topic(name) or ())
            ]
            if not tps:
                return Replay([], 0)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            remaining = {tp for tp in tps if end[tp] > 0}
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
            while remaining:
                batches = await consumer.getmany(*remaining, timeout_ms=200, max_records=batch)
                for tp in remaining:
                    # Tansu 0.6 answers ListOffsets(latest) with the last *batch's* base
                    # offset + 1 (1 for a partition holding one 8-record batch); the high
                    # watermark of a fetch response is right, so it corrects the end.
                    end[tp] = max(end[tp], consumer.highwater(tp) or 0)
                for tp, batch_records in batches.items():
                    for r in batch_records:
                        if r.offset >= end[tp]:
                            break  # produced after the replay began: the group consumer's
                        if r.topic in reduced and r.key is not None:
                            latest[(r.topic, r.partition, r.key)] = r  # decoded at the end
                        else:
                            keep(r)
                for tp in list(remaining):
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
        for r in latest.values():
            keep(r)
    finally:
        chunks.close()  # the spools of wholes left incomplete
        await _stop_quietly(consumer, broker.request_timeout_s, "replay consumer")
    if skipped:
        log.warning("replay of %s skipped %d undecodable records", names, skipped)
    records.sort(key=lambda r: (r.topic, r.partition, r.offset))
    return Replay(records, skipped)
