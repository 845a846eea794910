"""The runtime and large messages: chunks reach the handler once, whole, as the record of the
last chunk; commits stop at the first chunk of a whole still incomplete; a whole that fails its
checks is one dead letter; a large output goes out as chunks under one key."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from brokers.kafka import ConsumedRecord, Partition
from schemas import DeadLetter, DeviceStatus, MessageChunk, PartVersion, decode, encode
from schemas.chunks import Reassembler, encode_records, split
from schemas.limits import MAX_ASSEMBLED_BYTES, MAX_MESSAGE_BYTES
from schemas.messages import Message
from schemas.topics import Topic
from services.errors import RetryLater
from services.handler import InboundRecord, Outbound
from services.metrics import Outcome, ServiceMetrics
from services.runtime import ConsumeLoop
from tests.unit.schemas.helpers import same
from tests.unit.test_runtime_unit import (
    DLQ,
    FAST,
    IN,
    TABLE,
    FakeConsumer,
    FakeProducer,
    make_loop,
    status,
)

pytestmark = pytest.mark.timeout(10)

P0, P1 = Partition(IN, 0), Partition(IN, 1)


class Recorder:
    """Keeps every record it is given; answers with `outputs`."""

    def __init__(self, outputs: list[Outbound] | None = None) -> None:
        self.records: list[InboundRecord] = []
        self.outputs = outputs or []

    async def handle(self, record: InboundRecord) -> list[Outbound]:
        self.records.append(record)
        return list(self.outputs)


def large_status(message_id: str = "big-1", device: str = "dev-1") -> DeviceStatus:
    """A status of about 200 bytes: 4 chunks of 64."""
    return DeviceStatus(
        message_id=message_id, device_id=device, round=1, timestamp=1.0, online=True,
        reason="r" * 150,
    )  # fmt: skip


def chunk_values(message: Message, chunk_bytes: int = 64) -> list[bytes]:
    values = encode_records(message, key="k", max_bytes=chunk_bytes, chunk_bytes=chunk_bytes)
    assert len(values) > 1
    return values


def rec(offset: int, value: bytes, partition: int = 0) -> ConsumedRecord:
    return ConsumedRecord(IN, partition, offset, b"k", value, 0)


def plain(offset: int, partition: int = 0) -> ConsumedRecord:
    return rec(offset, encode(status(offset)), partition)


def seen(handler: Recorder) -> list[tuple[int, int, str]]:
    return [(r.partition, r.offset, r.message.message_id) for r in handler.records]


async def test_the_handler_sees_a_chunked_message_once_whole_after_its_last_chunk() -> None:
    whole = large_status()
    a = chunk_values(whole)
    assert len(a) == 4
    batch = [
        plain(0),
        rec(1, a[0]),
        plain(2),
        rec(3, a[1]),
        plain(0, partition=1),
        rec(4, a[2]),
        plain(5),
        rec(6, a[3]),
        plain(7),
    ]
    handler, producer, consumer = Recorder(), FakeProducer([]), FakeConsumer([])
    metrics = ServiceMetrics("unit")
    await make_loop(handler, producer, metrics).process_batch(batch, consumer)
    assert seen(handler) == [
        (0, 0, "m0"),
        (0, 2, "m2"),
        (1, 0, "m0"),
        (0, 5, "m5"),
        (0, 6, "big-1"),  # at the offset of its last chunk
        (0, 7, "m7"),
    ]
    record = handler.records[4]
    assert record.message == whole
    assert record.raw == encode(whole)
    assert consumer.committed() == {P0: 8, P1: 1}
    assert metrics.get(Outcome.CHUNKS_HELD) == 3
    assert producer.outputs(DLQ) == []


async def test_a_redelivered_chunk_does_not_make_the_message_twice() -> None:
    a = chunk_values(large_status())
    batch = [rec(0, a[0]), rec(1, a[1]), rec(2, a[1]), rec(3, a[0]), rec(4, a[2]), rec(5, a[3])]
    handler, producer, consumer = Recorder(), FakeProducer([]), FakeConsumer([])
    await make_loop(handler, producer).process_batch(batch, consumer)
    assert seen(handler) == [(0, 5, "big-1")]
    assert consumer.committed() == {P0: 6}


async def test_commits_stay_at_the_first_chunk_until_the_whole_is_complete() -> None:
    a = chunk_values(large_status())
    handler, producer, consumer = Recorder(), FakeProducer([]), FakeConsumer([])
    loop = make_loop(handler, producer)
    await loop.process_batch([plain(0), rec(1, a[0]), plain(2)], consumer)
    assert consumer.commits[-1] == {P0: 1}  # m0 done; a's first chunk is not
    await loop.process_batch([rec(3, a[1]), plain(4), plain(0, partition=1)], consumer)
    assert consumer.commits[-1] == {P0: 1, P1: 1}  # other partitions are not held back
    await loop.process_batch([rec(5, a[2]), plain(1, partition=1)], consumer)
    assert consumer.commits[-1] == {P0: 1, P1: 2}
    assert [r.offset for r in handler.records if r.partition == 0] == [0, 2, 4]
    await loop.process_batch([rec(6, a[3])], consumer)
    assert consumer.commits[-1] == {P0: 7}
    assert seen(handler)[-1] == (0, 6, "big-1")


async def test_commits_stay_at_the_earliest_of_two_incomplete_wholes() -> None:
    a, b = chunk_values(large_status("big-a")), chunk_values(large_status("big-b"))
    handler, producer, consumer = Recorder(), FakeProducer([]), FakeConsumer([])
    loop = make_loop(handler, producer)
    await loop.process_batch([rec(0, a[0]), *(rec(i + 1, v) for i, v in enumerate(b))], consumer)
    assert consumer.commits[-1] == {P0: 0}  # b is complete, a is not
    await loop.process_batch([rec(5, a[1]), plain(6)], consumer)
    assert consumer.commits[-1] == {P0: 0}
    await loop.process_batch([rec(7, a[2]), rec(8, a[3])], consumer)
    assert consumer.commits[-1] == {P0: 9}
    assert [m for _, _, m in seen(handler)] == ["big-b", "m6", "big-a"]


async def test_a_whole_that_fails_its_digest_is_one_dead_letter_and_no_handler_call() -> None:
    whole = large_status()
    data = encode(whole)
    chunks = split(data, whole, key="k", chunk_bytes=64)
    chunks[1] = dataclasses.replace(chunks[1], data=bytes(len(chunks[1].data)))
    values = [encode(c) for c in chunks]
    handler, producer, consumer = Recorder(), FakeProducer([]), FakeConsumer([])
    metrics = ServiceMetrics("unit")
    batch = [rec(i, v) for i, v in enumerate(values)] + [plain(len(values))]
    await make_loop(handler, producer, metrics).process_batch(batch, consumer)
    assert seen(handler) == [(0, 4, "m4")]
    (letter,) = producer.outputs(DLQ)
    assert isinstance(letter, DeadLetter)
    assert letter.error == "ChunkError"
    assert "SHA-256" in letter.reason
    assert letter.original == values[-1]
    assert letter.message_id == f"{IN}/0/3"
    assert metrics.get(Outcome.DEAD_LETTERED) == 1
    assert consumer.committed() == {P0: 5}  # the whole is given up: nothing holds the commit


async def test_a_chunk_contradicting_its_whole_is_a_dead_letter_and_frees_the_partition() -> None:
    a = chunk_values(large_status())
    liar = decode(a[1])
    assert isinstance(liar, MessageChunk)
    liar = dataclasses.replace(liar, digest=bytes(32))
    handler, producer, consumer = Recorder(), FakeProducer([]), FakeConsumer([])
    await make_loop(handler, producer).process_batch(
        [rec(0, a[0]), rec(1, encode(liar)), plain(2)], consumer
    )
    (letter,) = producer.outputs(DLQ)
    assert letter.error == "ChunkError"
    assert seen(handler) == [(0, 2, "m2")]
    assert consumer.committed() == {P0: 3}


def large_version() -> PartVersion:
    weights = np.arange(MAX_MESSAGE_BYTES // 4 + 1024, dtype=np.float32)
    return PartVersion(
        message_id="pv-expert-1-4", device_id="aggregator", round=2, timestamp=1.0,
        part="expert-1", version=4, layout_version=1, tensors={"fc1.weight": weights},
    )  # fmt: skip


async def test_a_large_output_is_produced_as_chunks_under_one_key() -> None:
    version = large_version()
    handler = Recorder([Outbound(Topic.MODEL, "expert-1", version)])
    producer, consumer = FakeProducer([]), FakeConsumer([])
    metrics = ServiceMetrics("unit")
    await make_loop(handler, producer, metrics).process_batch([plain(0)], consumer)
    model = TABLE.name(Topic.MODEL)
    sent = [(k, v) for t, k, v in producer.sent if t == model]
    assert len(sent) >= 3
    assert {k for k, _ in sent} == {b"expert-1"}
    assert all(len(v) <= MAX_MESSAGE_BYTES for _, v in sent)
    reassembler = Reassembler()
    results = []
    for _, value in sent:
        chunk = decode(value)
        assert isinstance(chunk, MessageChunk)
        assert chunk.key == "expert-1"
        results.append(reassembler.add(chunk, 0.0))
    assembled = results[-1]
    assert assembled is not None
    assert assembled.data == encode(version, max_bytes=MAX_ASSEMBLED_BYTES)
    assert same(assembled.message, version)
    assert consumer.committed() == {P0: 1}


async def test_an_incomplete_whole_stops_holding_commits_once_it_is_too_old() -> None:
    """A sender that died mid-whole: after the reassembly budget's max_age_s (600 s) its
    chunks are given up and the partition's commits move on, even when no chunk comes."""
    now = [100.0]
    a = chunk_values(large_status())
    handler, producer, consumer = Recorder(), FakeProducer([]), FakeConsumer([])
    loop = ConsumeLoop(
        name="unit", handler=handler, producer=producer, table=TABLE, settings=FAST,
        metrics=ServiceMetrics("unit"), clock=lambda: now[0],
    )  # fmt: skip
    await loop.process_batch([rec(0, a[0]), plain(1)], consumer)
    assert consumer.commits[-1] == {P0: 0}
    now[0] += 3600.0  # an hour later, only whole messages come
    await loop.process_batch([plain(2), plain(3)], consumer)
    assert consumer.commits[-1] == {P0: 4}
    (letter,) = [m for m in producer.outputs(DLQ) if isinstance(m, DeadLetter)]
    assert (letter.error, letter.device_id) == ("IncompleteMessage", "dev-1")
    assert letter.reason.startswith("1 of 4 chunks came")


class Interrupting(Recorder):
    """Fails the chunked message with a retriable error and stops the loop meanwhile."""

    loop: ConsumeLoop

    async def handle(self, record: InboundRecord) -> list[Outbound]:
        if isinstance(record.message, DeviceStatus) and record.message.message_id == "big-1":
            self.loop.stop()
            raise RetryLater("store busy")
        return await super().handle(record)


async def test_a_whole_whose_handling_was_interrupted_is_not_committed_past() -> None:
    # [A#0, m1, A#1, A#2, m4, A#3, m6]: A fails and the loop stops while it waits to retry;
    # the records before it were handled, but the commit must stay at A's first chunk.
    a = chunk_values(large_status())
    batch = [rec(0, a[0]), plain(1), rec(2, a[1]), rec(3, a[2]), plain(4), rec(5, a[3]), plain(6)]
    handler, producer, consumer = Interrupting(), FakeProducer([]), FakeConsumer([])
    loop = make_loop(handler, producer)
    handler.loop = loop
    await loop.process_batch(batch, consumer)
    assert seen(handler) == [(0, 1, "m1"), (0, 4, "m4")]
    assert consumer.committed() == {P0: 0}


async def test_a_chunk_of_no_whole_that_is_not_a_first_is_a_stray_and_holds_nothing() -> None:
    # After a restart at the first chunk of an incomplete whole, the tail of a whole handled
    # before (interleaved on the partition) comes again: it is ignored, not held for 600 s.
    a, b = chunk_values(large_status("a")), chunk_values(large_status("b"))
    handler, producer, consumer = Recorder(), FakeProducer([]), FakeConsumer([])
    metrics = ServiceMetrics("unit")
    loop = make_loop(handler, producer, metrics)
    batch = [rec(1, a[0]), rec(2, b[1]), rec(3, b[2]), rec(4, b[3]), rec(5, a[1])]
    await loop.process_batch(batch, consumer)
    assert seen(handler) == []
    assert metrics.get(Outcome.CHUNKS_STRAY) == 3
    assert consumer.committed() == {P0: 1}  # held by a, not by b's tail
    await loop.process_batch([rec(6, a[2]), rec(7, a[3])], consumer)
    assert seen(handler) == [(0, 7, "a")]
    assert consumer.committed() == {P0: 8}
