"""The profiler's handler without brokers: routing checks, snapshots, restart and refresh."""

from __future__ import annotations

import pytest

from brokers.errors import BrokerUnavailable
from schemas import encode
from schemas.messages import (
    Assignment,
    DeviceStatus,
    Message,
    PartClosed,
    ProfileSnapshot,
    Telemetry,
    UpdateAck,
)
from schemas.topics import Topic, TopicTable
from services.errors import InvalidPayload, RetryLater
from services.handler import InboundRecord, Outbound
from services.profiler.app import ProfilerHandler
from services.profiler.state import FoldParams, Note
from services.runtime.delivery import encode_outbound

TABLE = TopicTable("unit")
DEVICES = ("dev-00000", "dev-00001", "dev-00002")


def _telemetry(device: str, round_: int, loss: dict[str, float] | None = None) -> Telemetry:
    return Telemetry(
        message_id=f"t-{device}-{round_}",
        device_id=device,
        round=round_,
        timestamp=10.0 * round_,
        device_type=0,
        compute_ms_per_sample=1.0 + round_,
        bandwidth_kbps=500.0,
        memory_mb=1024.0,
        battery=0.5,
        num_samples=40,
        routing_histogram=(1.0, 2.0),
        expert_loss=loss or {},
    )


def _assignment(device: str, round_: int) -> Assignment:
    return Assignment(
        message_id=f"a-{device}-{round_}",
        device_id=device,
        round=round_,
        timestamp=1.0,
        experts=(1,),
        deadline=1e9,
        model_versions={},
    )


def _ack(device: str, round_: int, part: str, status: str = "applied") -> UpdateAck:
    return UpdateAck(
        message_id=f"k-{device}-{round_}-{part}",
        device_id=device,
        round=round_,
        timestamp=1.0,
        update_id=f"u-{device}-{round_}",
        part=part,
        status=status,
    )


_TOPIC = {Telemetry: Topic.TELEMETRY, DeviceStatus: Topic.TELEMETRY}
_TOPIC.update({Assignment: Topic.ASSIGNMENTS, UpdateAck: Topic.ACKS})


class Stream:
    """Input records as Kafka would hand them out: one partition per device, offsets counted."""

    def __init__(self) -> None:
        self.records: list[InboundRecord] = []
        self._next: dict[tuple[str, int], int] = {}

    def add(
        self, message: Message, *, topic: Topic | None = None, key: bytes | None = None
    ) -> None:
        name = TABLE.name(topic or _TOPIC[type(message)])
        partition = DEVICES.index(message.device_id) if message.device_id in DEVICES else 0
        offset = self._next.get((name, partition), 0)
        self._next[(name, partition)] = offset + 1
        self.records.append(
            InboundRecord(
                topic=name,
                partition=partition,
                offset=offset,
                key=message.device_id.encode() if key is None else key,
                message=message,
                raw=encode(message),
                timestamp_ms=1_000 * (len(self.records) + 1),
            )
        )


def _rounds(stream: Stream, rounds: range) -> None:
    for r in rounds:
        for d in DEVICES:
            stream.add(_telemetry(d, r, {"expert-1": 0.1 * r}))
        for d in DEVICES[:2]:
            stream.add(_assignment(d, r))
            stream.add(_ack(d, r, "shared"))
            stream.add(_ack(d, r, "expert-1", "late" if d == DEVICES[1] else "applied"))


class Changelog:
    """The `profiles` topic as the handler's outputs fill it (what a replay returns)."""

    def __init__(self) -> None:
        self.snapshots: list[ProfileSnapshot] = []
        self.reads = 0
        self.fail = False

    def take(self, outputs: list[Outbound]) -> None:
        for out in outputs:
            encode_outbound(out, TABLE)  # every output is valid on the wire
            assert out.topic is Topic.PROFILES
            assert isinstance(out.message, ProfileSnapshot)
            assert out.key == out.message.device_id
            self.snapshots.append(out.message)

    async def read(self) -> list[ProfileSnapshot]:
        self.reads += 1
        if self.fail:
            raise BrokerUnavailable("no broker")
        return list(self.snapshots)


def _handler(changelog: Changelog) -> ProfilerHandler:
    return ProfilerHandler(TABLE, FoldParams(), read_changelog=changelog.read, clock=lambda: 7.0)


async def _feed(
    handler: ProfilerHandler, changelog: Changelog, records: list[InboundRecord]
) -> None:
    for record in records:
        changelog.take(await handler.handle(record))


async def test_snapshots_carry_the_device_and_the_round_of_its_latest_report() -> None:
    stream, changelog = Stream(), Changelog()
    _rounds(stream, range(1, 4))
    handler = _handler(changelog)
    await _feed(handler, changelog, stream.records)
    last = {s.device_id: s for s in changelog.snapshots}
    assert set(last) == set(DEVICES)
    assert {s.round for s in last.values()} == {3}
    assert last[DEVICES[0]].pending_round == 3
    assert (last[DEVICES[0]].rounds_assigned, last[DEVICES[0]].rounds_completed) == (2, 2)
    assert (last[DEVICES[1]].rounds_assigned, last[DEVICES[1]].rounds_completed) == (2, 0)
    assert last[DEVICES[2]].rounds_assigned == 0
    assert last[DEVICES[0]].message_id.startswith(f"profile:{DEVICES[0]}:acks/0:")
    assert handler.notes[Note.OUTCOME] == 4
    assert changelog.reads == 0  # one instance from offset 0: nothing to catch up on


async def test_a_restarted_handler_continues_and_folds_nothing_twice() -> None:
    stream, changelog = Stream(), Changelog()
    _rounds(stream, range(1, 6))
    whole = _handler(Changelog())
    await _feed(whole, Changelog(), stream.records)
    for crash in (5, 17, 30, len(stream.records) - 1):
        changelog = Changelog()
        first = _handler(changelog)
        await _feed(first, changelog, stream.records[:crash])
        # Restart: restore from the changelog, then the uncommitted tail (here: everything
        # from the beginning, the worst case) comes again.
        second = _handler(changelog)
        second.restore(await changelog.read())
        await _feed(second, changelog, stream.records)
        assert second.devices == whole.devices, f"crash after {crash}"
        assert second.notes[Note.REDELIVERED] >= crash - 3  # no-change records may repeat
        assert changelog.reads == 1  # the restore; every partition continued where it was


def _partitions(records: list[InboundRecord]) -> frozenset[tuple[str, int]]:
    return frozenset((r.topic, r.partition) for r in records)


async def test_a_gained_partition_is_read_again_from_the_changelog() -> None:
    stream, changelog = Stream(), Changelog()
    _rounds(stream, range(1, 4))
    half = len(stream.records) // 2
    every = _partitions(stream.records)
    mine, other = _handler(changelog), _handler(changelog)
    await _feed(mine, changelog, stream.records[:5])
    # The partitions moved to the other instance for a while, then came back.
    await mine.on_partitions_revoked(every)
    await other.on_partitions_assigned(every)
    await _feed(other, changelog, stream.records[:half])
    await mine.on_partitions_assigned(every)
    await _feed(mine, changelog, stream.records[half:])
    assert changelog.reads == 2  # once per instance, at the first record after the assignment
    reference = _handler(Changelog())
    await _feed(reference, Changelog(), stream.records)
    assert mine.devices == reference.devices
    assert mine.notes["changelog_reads"] == 1


async def test_a_changelog_that_cannot_be_read_asks_for_a_retry() -> None:
    stream, changelog = Stream(), Changelog()
    _rounds(stream, range(1, 3))
    changelog.fail = True
    handler = _handler(changelog)
    await handler.on_partitions_assigned(_partitions(stream.records))
    with pytest.raises(RetryLater):
        await handler.handle(stream.records[0])
    assert handler.devices == {}
    changelog.fail = False  # the runtime retries the same record
    assert len(await handler.handle(stream.records[0])) == 1
    assert changelog.reads == 2


async def test_wrong_inputs_are_refused_for_the_dead_letter_topic() -> None:
    handler = _handler(Changelog())
    stream = Stream()
    stream.add(_telemetry(DEVICES[0], 1), topic=Topic.ACKS)  # wrong topic for the type
    stream.add(_telemetry(DEVICES[0], 1), key=b"dev-99999")  # key is not the device
    closed = PartClosed(
        message_id="p", device_id="aggregator", round=1, timestamp=1.0,
        part="shared", version=1, applied=1, reason="quorum",
    )  # fmt: skip
    stream.add(closed, topic=Topic.TELEMETRY)
    reasons = []
    for record in stream.records:
        with pytest.raises(InvalidPayload) as info:
            await handler.handle(record)
        reasons.append(info.value.reason)
    assert reasons == ["unexpected_message", "key_mismatch", "unexpected_message"]


async def test_a_status_before_any_telemetry_is_dropped_and_counted() -> None:
    handler = _handler(Changelog())
    stream = Stream()
    stream.add(
        DeviceStatus(message_id="s", device_id=DEVICES[0], round=1, timestamp=1.0, online=True)
    )
    assert await handler.handle(stream.records[0]) == []
    assert handler.notes[Note.UNKNOWN_DEVICE] == 1
    assert handler.devices == {}
