"""The runtime's decisions against in-memory fakes: commit only after acks, dead letters,
retries, interruption by stop and revoke, ticks and checkpoints."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from brokers.errors import BrokerError, BrokerUnavailable
from brokers.kafka import (
    ConsumedRecord,
    ConsumerStopped,
    Partition,
    RebalanceListener,
    RecordAck,
)
from brokers.settings import BrokerSettings
from schemas import DeadLetter, DeviceStatus, decode, encode
from schemas.topics import Topic
from services.errors import InvalidPayload, RetryLater, ServiceFailed
from services.handler import InboundRecord, Outbound
from services.metrics import Outcome, ServiceMetrics
from services.runtime import ConsumeLoop, RuntimeSettings, ServiceRuntime

pytestmark = pytest.mark.timeout(10)

BROKER = BrokerSettings(namespace="unit")
TABLE = BROKER.topic_table()
IN = TABLE.name(Topic.TELEMETRY)
OUT = TABLE.name(Topic.PROFILES)
DLQ = TABLE.name(Topic.DEAD_LETTER)
FAST = RuntimeSettings(
    retry_initial_s=0.001,
    retry_max_s=0.005,
    poll_timeout_s=0.01,
    tick_interval_s=0.01,
    drain_timeout_s=2.0,
    rebalance_timeout_s=2.0,
)


def status(i: int, device: str = "dev-1") -> DeviceStatus:
    return DeviceStatus(message_id=f"m{i}", device_id=device, round=1, timestamp=1.0, online=True)


def record(offset: int, value: bytes | None = None, partition: int = 0) -> ConsumedRecord:
    raw = encode(status(offset)) if value is None else value
    return ConsumedRecord(IN, partition, offset, b"dev-1", raw, 0)


async def until(predicate: Callable[[], bool], changed: asyncio.Event, limit_s: float = 2) -> None:
    """Wait until `predicate()` holds, re-checking whenever a fake signals a change."""
    async with asyncio.timeout(limit_s):
        while not predicate():
            changed.clear()
            await changed.wait()


class FakeProducer:
    """Acks are futures the test can hold back or fail; `log` records sends and acks."""

    def __init__(
        self, log: list[str], *, hold: bool = False, changed: asyncio.Event | None = None
    ) -> None:
        self.changed = changed or asyncio.Event()
        self.log = log
        self.hold = hold
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.pending: list[asyncio.Future[RecordAck]] = []
        self.fail_acks: list[BrokerError] = []  # raised by the next acks, in order
        self.fail_sends: list[BrokerError] = []

    async def send(self, topic: str, key: bytes | None, value: bytes) -> Awaitable[RecordAck]:
        if self.fail_sends:
            raise self.fail_sends.pop(0)
        self.sent.append((topic, key, value))
        self.log.append(f"send {topic}")
        self.changed.set()
        fut: asyncio.Future[RecordAck] = asyncio.get_running_loop().create_future()
        if self.fail_acks:
            fut.set_exception(self.fail_acks.pop(0))
        elif self.hold:
            self.pending.append(fut)
        else:
            fut.set_result(RecordAck(topic, 0, len(self.sent)))
        return self._acked(fut)

    async def _acked(self, fut: asyncio.Future[RecordAck]) -> RecordAck:
        ack = await fut
        self.log.append("ack")
        return ack

    def release(self) -> None:
        for fut in self.pending:
            fut.set_result(RecordAck("t", 0, 0))
        self.pending.clear()

    def outputs(self, topic: str) -> list[Any]:
        return [decode(v) for t, _, v in self.sent if t == topic]


class FakeConsumer:
    """Serves queued records in batches; `on_fetch` runs before a batch is returned."""

    def __init__(
        self,
        log: list[str],
        records: Sequence[ConsumedRecord] = (),
        changed: asyncio.Event | None = None,
    ) -> None:
        self.changed = changed or asyncio.Event()
        self.log = log
        self.queue = list(records)
        self.commits: list[dict[Partition, int]] = []
        self.listener: RebalanceListener | None = None
        self.on_fetch: Any = None

    async def getmany(self, timeout_s: float, max_records: int) -> list[ConsumedRecord]:
        self.changed.set()
        if self.on_fetch is not None:
            hook, self.on_fetch = self.on_fetch, None
            await hook()
        if not self.queue:
            await asyncio.sleep(timeout_s)
            return []
        batch, self.queue = self.queue[:max_records], self.queue[max_records:]
        return batch

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        self.log.append("commit")
        self.commits.append(dict(offsets))

    def committed(self) -> dict[Partition, int]:
        out: dict[Partition, int] = {}
        for c in self.commits:
            out.update(c)
        return out


class EchoHandler:
    """Maps each status to a status with message id `out-<id>`; optional scripted failures."""

    def __init__(self, log: list[str] | None = None, changed: asyncio.Event | None = None) -> None:
        self.changed = changed or asyncio.Event()
        self.log = log if log is not None else []
        self.raises: list[BaseException] = []
        self.seen: list[int] = []

    async def handle(self, record: InboundRecord) -> list[Outbound]:
        self.seen.append(record.offset)
        self.changed.set()
        if self.raises:
            raise self.raises.pop(0)
        msg = record.message
        out = DeviceStatus(
            message_id=f"out-{msg.message_id}",
            device_id=msg.device_id,
            round=msg.round,
            timestamp=msg.timestamp,
            online=True,
        )
        return [Outbound(Topic.PROFILES, msg.device_id, out)]


class CheckpointingHandler(EchoHandler):
    async def checkpoint(self) -> None:
        self.log.append("checkpoint")


class TickingHandler(EchoHandler):
    def __init__(self) -> None:
        super().__init__()
        self.ticks = 0

    async def on_tick(self, now: float) -> list[Outbound]:
        self.ticks += 1
        self.changed.set()
        return [Outbound(Topic.ROUNDS, "round", status(1000 + self.ticks, "matcher"))]


def make_loop(
    handler: Any, producer: FakeProducer, metrics: ServiceMetrics | None = None
) -> ConsumeLoop:
    return ConsumeLoop(
        name="unit",
        handler=handler,
        producer=producer,
        table=TABLE,
        settings=FAST,
        metrics=metrics or ServiceMetrics("unit"),
        clock=lambda: 100.0,
    )


async def test_outputs_are_acked_before_the_commit() -> None:
    log: list[str] = []
    producer, consumer = FakeProducer(log), FakeConsumer(log)
    loop = make_loop(EchoHandler(), producer)
    await loop.process_batch([record(0), record(1), record(2)], consumer)
    assert [m.message_id for m in producer.outputs(OUT)] == ["out-m0", "out-m1", "out-m2"]
    assert log == ["send " + OUT] * 3 + ["ack"] * 3 + ["commit"]
    assert consumer.committed() == {Partition(IN, 0): 3}


async def test_commit_waits_for_held_acks() -> None:
    log: list[str] = []
    producer, consumer = FakeProducer(log, hold=True), FakeConsumer(log)
    loop = make_loop(EchoHandler(), producer)
    task = asyncio.create_task(loop.process_batch([record(0), record(1)], consumer))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task.done()
    assert consumer.commits == []
    producer.release()
    await asyncio.wait_for(task, 1)
    assert consumer.committed() == {Partition(IN, 0): 2}


async def test_checkpoint_runs_after_acks_and_before_commit() -> None:
    log: list[str] = []
    producer, consumer = FakeProducer(log), FakeConsumer(log)
    loop = make_loop(CheckpointingHandler(log), producer)
    await loop.process_batch([record(0)], consumer)
    assert log == ["send " + OUT, "ack", "checkpoint", "commit"]


async def test_undecodable_record_is_dead_lettered_and_committed() -> None:
    log: list[str] = []
    producer, consumer = FakeProducer(log), FakeConsumer(log)
    metrics = ServiceMetrics("unit")
    loop = make_loop(EchoHandler(), producer, metrics)
    garbage = b"\xc1not msgpack" * 10
    await loop.process_batch([record(0, garbage), record(1)], consumer)
    (letter,) = producer.outputs(DLQ)
    assert isinstance(letter, DeadLetter)
    assert letter.source == IN
    assert letter.original == garbage
    assert letter.original_size == len(garbage)
    assert letter.error.endswith("Error")
    assert letter.message_id == f"{IN}/0/0"
    assert [t for t, _, _ in producer.sent] == [DLQ, OUT]
    assert producer.sent[0][1] == IN.encode()  # dead letters are keyed by source topic
    assert consumer.committed() == {Partition(IN, 0): 2}
    assert metrics.get(Outcome.DEAD_LETTERED) == 1
    assert metrics.get(Outcome.HANDLED) == 1


async def test_invalid_payload_and_fatal_domain_errors_are_dead_lettered() -> None:
    log: list[str] = []
    producer, consumer = FakeProducer(log), FakeConsumer(log)
    handler = EchoHandler()
    handler.raises = [InvalidPayload("stale-round", "round 1 < 3"), BrokerError("refused")]
    await make_loop(handler, producer).process_batch([record(0), record(1)], consumer)
    letters = producer.outputs(DLQ)
    assert [(d.error, d.reason) for d in letters] == [
        ("InvalidPayload", "stale-round: round 1 < 3"),
        ("BrokerError", "refused"),
    ]
    assert letters[0].device_id == "dev-1"
    assert letters[0].round == 1
    assert consumer.committed() == {Partition(IN, 0): 2}


async def test_handler_bug_is_dead_lettered_not_fatal() -> None:
    log: list[str] = []
    producer, consumer = FakeProducer(log), FakeConsumer(log)
    metrics = ServiceMetrics("unit")
    handler = EchoHandler()
    handler.raises = [KeyError("oops")]
    await make_loop(handler, producer, metrics).process_batch([record(0), record(1)], consumer)
    (letter,) = producer.outputs(DLQ)
    assert letter.error == "KeyError"
    assert "oops" in letter.reason
    assert len(producer.outputs(OUT)) == 1
    assert metrics.get(Outcome.HANDLER_ERRORS) == 1
    assert consumer.committed() == {Partition(IN, 0): 2}


async def test_retriable_errors_are_retried_then_handled() -> None:
    log: list[str] = []
    producer, consumer = FakeProducer(log), FakeConsumer(log)
    metrics = ServiceMetrics("unit")
    handler = EchoHandler()
    handler.raises = [RetryLater("db down"), BrokerUnavailable("mqtt down")]
    await make_loop(handler, producer, metrics).process_batch([record(0)], consumer)
    assert handler.seen == [0, 0, 0]
    assert metrics.get(Outcome.RETRIED) == 2
    assert metrics.get(Outcome.HANDLED) == 1
    assert producer.outputs(DLQ) == []
    assert len(producer.outputs(OUT)) == 1
    assert consumer.committed() == {Partition(IN, 0): 1}


async def test_failed_ack_is_resent_before_commit() -> None:
    log: list[str] = []
    producer, consumer = FakeProducer(log), FakeConsumer(log)
    producer.fail_acks = [BrokerUnavailable("leader moved")]
    producer.fail_sends = [BrokerUnavailable("no metadata")]
    metrics = ServiceMetrics("unit")
    await make_loop(EchoHandler(), producer, metrics).process_batch([record(0)], consumer)
    # First enqueue refused, second enqueued but its ack failed, third acked.
    assert len(producer.outputs(OUT)) == 2
    assert metrics.get(Outcome.RETRIED) == 2
    assert metrics.get(Outcome.PRODUCED) == 1
    assert log[-2:] == ["ack", "commit"]


async def test_non_retriable_produce_failure_is_fatal_and_nothing_committed() -> None:
    log: list[str] = []
    producer, consumer = FakeProducer(log), FakeConsumer(log)
    producer.fail_acks = [BrokerError("MessageSizeTooLargeError")]
    with pytest.raises(ServiceFailed):
        await make_loop(EchoHandler(), producer).process_batch([record(0)], consumer)
    assert consumer.commits == []


async def test_stop_interrupts_endless_retries_without_commit() -> None:
    log: list[str] = []
    producer, consumer = FakeProducer(log), FakeConsumer(log)
    handler = EchoHandler()
    handler.raises = [RetryLater("down")] * 10_000
    loop = make_loop(handler, producer)
    task = asyncio.create_task(loop.process_batch([record(0), record(1)], consumer))
    await until(lambda: len(handler.seen) >= 3, handler.changed)
    loop.stop()
    await asyncio.wait_for(task, 1)
    assert consumer.commits == []
    assert producer.sent == []


async def test_stop_finishes_started_records_and_commits_them() -> None:
    log: list[str] = []
    producer, consumer = FakeProducer(log, hold=True), FakeConsumer(log)
    loop = make_loop(EchoHandler(), producer)
    task = asyncio.create_task(loop.process_batch([record(0), record(1)], consumer))
    await until(lambda: len(producer.pending) >= 2, producer.changed)
    loop.stop()  # both records were handled; their outputs are still unacked
    producer.release()
    await asyncio.wait_for(task, 1)
    assert consumer.committed() == {Partition(IN, 0): 2}


async def test_revoke_waits_for_the_batch_in_hand_to_commit() -> None:
    log: list[str] = []
    producer, consumer = FakeProducer(log, hold=True), FakeConsumer(log)
    gate, entered = asyncio.Event(), asyncio.Event()

    class Gated(EchoHandler):
        async def handle(self, record: InboundRecord) -> list[Outbound]:
            entered.set()
            await gate.wait()
            return await super().handle(record)

    loop = make_loop(Gated(), producer)
    batch = [record(0), record(1, partition=1), record(2)]

    async def run_batch() -> None:
        async with loop._lock:  # as run() does
            await loop.process_batch(batch, consumer)

    task = asyncio.create_task(run_batch())
    await asyncio.wait_for(entered.wait(), 1)  # record 0 is in the handler
    revoke = asyncio.create_task(loop.on_revoked({Partition(IN, 0), Partition(IN, 1)}))
    await asyncio.sleep(0.01)  # a negative can only be shown by giving it time
    gate.set()
    await until(lambda: bool(producer.pending), producer.changed)
    await asyncio.sleep(0.01)
    assert not revoke.done(), "revoke must wait for the in-flight batch"
    producer.release()
    await asyncio.wait_for(asyncio.gather(task, revoke), 1)
    log.append("revoked")
    # Record 0 was in hand when the revoke came: it is finished and committed, the rest is
    # left for the next owner.
    assert consumer.committed() == {Partition(IN, 0): 1}
    assert log[-2:] == ["commit", "revoked"]
    assert loop.assigned == frozenset()


async def test_records_handed_out_before_a_revoke_are_dropped() -> None:
    log: list[str] = []
    producer = FakeProducer(log)
    consumer = FakeConsumer(log, [record(0), record(1)])
    metrics = ServiceMetrics("unit")
    loop = make_loop(EchoHandler(), producer, metrics)

    async def revoke_right_after_the_fetch() -> None:
        # Runs after getmany handed the records out, before the loop takes them up.
        asyncio.get_running_loop().call_soon(
            lambda: asyncio.ensure_future(loop.on_revoked({Partition(IN, 0)}))
        )

    consumer.on_fetch = revoke_right_after_the_fetch
    task = asyncio.create_task(loop.run(consumer))
    await until(lambda: metrics.get(Outcome.DROPPED_STALE) > 0, consumer.changed)
    loop.stop()
    await asyncio.wait_for(task, 1)
    assert metrics.get(Outcome.DROPPED_STALE) == 2
    assert producer.sent == []
    assert consumer.commits == []


async def test_records_handed_out_after_a_rebalance_are_handled() -> None:
    """aiokafka's getmany waits out a rebalance and then hands out records of the new
    assignment (their positions already moved on): dropping them would lose them."""
    log: list[str] = []
    producer = FakeProducer(log)
    consumer = FakeConsumer(log, [record(0), record(1)])
    metrics = ServiceMetrics("unit")
    loop = make_loop(EchoHandler(), producer, metrics)

    async def rebalance_inside_the_fetch() -> None:
        await loop.on_revoked({Partition(IN, 0)})
        await loop.on_assigned({Partition(IN, 0)})

    consumer.on_fetch = rebalance_inside_the_fetch
    task = asyncio.create_task(loop.run(consumer))
    await until(lambda: bool(consumer.commits), consumer.changed)
    loop.stop()
    await asyncio.wait_for(task, 1)
    assert metrics.get(Outcome.DROPPED_STALE) == 0
    assert consumer.committed() == {Partition(IN, 0): 2}


async def test_ticks_produce_and_run_between_batches() -> None:
    log: list[str] = []
    producer = FakeProducer(log)
    consumer = FakeConsumer(log, [record(0)])
    handler = TickingHandler()
    clock = iter(range(10**6))
    loop = ConsumeLoop(
        name="unit",
        handler=handler,
        producer=producer,
        table=TABLE,
        settings=FAST,
        metrics=ServiceMetrics("unit"),
        clock=lambda: float(next(clock)),
    )
    task = asyncio.create_task(loop.run(consumer))
    await until(lambda: handler.ticks >= 2, handler.changed)
    loop.stop()
    await asyncio.wait_for(task, 1)
    assert len(producer.outputs(TABLE.name(Topic.ROUNDS))) >= 2
    assert consumer.committed() == {Partition(IN, 0): 1}


async def test_service_runtime_drains_and_stops_with_fakes() -> None:
    log: list[str] = []
    producer = FakeProducer(log)
    consumer = FakeConsumer(log, [record(i, partition=i % 2) for i in range(50)])
    changed = consumer.changed
    seen_group: list[str] = []

    @asynccontextmanager
    async def factory(
        topics: Sequence[str], group: str, listener: RebalanceListener
    ) -> AsyncIterator[FakeConsumer]:
        seen_group.append(group)
        await listener.on_assigned({Partition(IN, 0), Partition(IN, 1)})
        yield consumer

    runtime = ServiceRuntime(
        BROKER,
        name="echo",
        handler=EchoHandler(),
        inputs=[Topic.TELEMETRY],
        group_id="echo-group",
        settings=FAST,
        producer=producer,
        consumer_factory=factory,
    )
    async with runtime:
        await until(lambda: runtime.metrics.get(Outcome.HANDLED) >= 50, changed)
        runtime.stop()
        await asyncio.wait_for(runtime.wait(), 2)
    assert seen_group == ["echo-group"]
    assert runtime.topics == [IN]
    assert consumer.committed() == {Partition(IN, 0): 49, Partition(IN, 1): 50}
    snap = runtime.metrics.snapshot()
    assert snap["handled"] == 50
    assert snap["produced"] == 50
    assert snap["service"] == "echo"


async def test_service_runtime_raises_the_loop_failure_itself() -> None:
    log: list[str] = []
    producer = FakeProducer(log)
    producer.fail_acks = [BrokerError("refused for good")]
    consumer = FakeConsumer(log, [record(0)])

    @asynccontextmanager
    async def factory(
        topics: Sequence[str], group: str, listener: RebalanceListener
    ) -> AsyncIterator[FakeConsumer]:
        yield consumer

    runtime = ServiceRuntime(
        BROKER,
        name="echo",
        handler=EchoHandler(),
        inputs=[IN],
        group_id="g",
        settings=FAST,
        producer=producer,
        consumer_factory=factory,
    )
    with pytest.raises(ServiceFailed):
        async with runtime:
            await runtime.wait()
    assert consumer.commits == []


async def test_consumer_stopped_ends_the_loop() -> None:
    class Stopped(FakeConsumer):
        async def getmany(self, timeout_s: float, max_records: int) -> list[ConsumedRecord]:
            raise ConsumerStopped("stopped")

    loop = make_loop(EchoHandler(), FakeProducer([]))
    await asyncio.wait_for(loop.run(Stopped([])), 1)


def _kafka_error_classes() -> list[type[Exception]]:
    import aiokafka.errors as kafka_errors

    found = []
    for value in vars(kafka_errors).values():
        if isinstance(value, type) and issubclass(value, kafka_errors.KafkaError):
            found.append(value)
    return found


@pytest.mark.parametrize("cls", _kafka_error_classes(), ids=lambda c: c.__name__)
def test_every_kafka_error_is_translated_keeping_retriable(cls: type[Exception]) -> None:
    from aiokafka.errors import CommitFailedError, KafkaTimeoutError, RequestTimedOutError

    from brokers.errors import BrokerTimeout
    from brokers.kafka import CommitFailed, translate

    try:
        exc = cls()
    except TypeError:
        exc = cls("x")
    ours = translate(exc, "op")
    assert isinstance(ours, BrokerError)
    assert str(ours).startswith("op")
    if issubclass(cls, CommitFailedError):
        assert isinstance(ours, CommitFailed)
        assert not ours.retriable
    elif issubclass(cls, KafkaTimeoutError | RequestTimedOutError):
        assert isinstance(ours, BrokerTimeout)
    else:
        assert ours.retriable == bool(getattr(cls, "retriable", False))
        assert isinstance(ours, BrokerUnavailable) == ours.retriable


def test_asyncio_timeouts_become_broker_timeouts() -> None:
    from brokers.errors import BrokerTimeout
    from brokers.kafka import translate

    assert isinstance(translate(TimeoutError(), "fetch"), BrokerTimeout)


async def test_a_revoke_that_times_out_does_not_wedge_the_loop() -> None:
    log: list[str] = []
    changed = asyncio.Event()
    producer = FakeProducer(log, changed=changed)
    consumer = FakeConsumer(log, [record(0), record(1)], changed=changed)
    gate, entered = asyncio.Event(), asyncio.Event()

    class SlowFirst(EchoHandler):
        async def handle(self, record: InboundRecord) -> list[Outbound]:
            if record.offset == 0:
                entered.set()
                await gate.wait()
            return await super().handle(record)

    handler = SlowFirst(changed=changed)
    settings = dataclasses.replace(FAST, max_batch=1, rebalance_timeout_s=0.05)
    loop = ConsumeLoop(
        name="unit",
        handler=handler,
        producer=producer,
        table=TABLE,
        settings=settings,
        metrics=ServiceMetrics("unit"),
    )
    task = asyncio.create_task(loop.run(consumer))
    await asyncio.wait_for(entered.wait(), 1)
    await asyncio.wait_for(loop.on_revoked({Partition(IN, 0)}), 1)  # gives up after 0.05 s
    await loop.on_assigned({Partition(IN, 0)})
    gate.set()
    await until(lambda: consumer.committed().get(Partition(IN, 0)) == 2, changed)
    loop.stop()
    await asyncio.wait_for(task, 1)
    assert handler.seen == [0, 1]


async def test_outputs_of_an_interrupted_batch_go_out_before_any_checkpoint() -> None:
    """A record handled but not delivered: nothing is checkpointed or committed until its
    outputs are out (else a restart would take it for a duplicate and lose them)."""
    log: list[str] = []
    producer, consumer = FakeProducer(log), FakeConsumer(log)

    class Saving(EchoHandler):
        checkpoints = 0

        async def checkpoint(self) -> None:
            self.checkpoints += 1

    handler = Saving()
    loop = make_loop(handler, producer)
    producer.fail_sends = [BrokerUnavailable("down")] * 10_000
    task = asyncio.create_task(loop.process_batch([record(0), record(1)], consumer))
    await until(lambda: len(handler.seen) >= 1, handler.changed)
    loop.stop()  # interrupts the endless send retries of record 0's output
    await asyncio.wait_for(task, 1)
    assert (consumer.commits, handler.checkpoints) == ([], 0)
    # Once the producer works again, the kept output goes out first, then work resumes.
    producer.fail_sends = []
    loop2 = loop  # the same loop instance (a rebalance, not a restart)
    loop2._interrupt.clear()
    loop2._stopping.clear()
    await loop2.process_batch([record(0), record(1)], consumer)
    assert handler.checkpoints == 1
    assert consumer.committed() == {Partition(IN, 0): 2}
    assert len(producer.outputs(OUT)) == 3  # record 0's kept output, then both again
