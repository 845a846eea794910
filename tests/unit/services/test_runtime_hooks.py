"""The runtime's optional `PartitionListener` capability: a handler hears which partitions it
lost (after the batch in hand was committed) and gained, never concurrently with a batch."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from brokers.kafka import Partition
from services.handler import InboundRecord, Outbound, PartitionListener
from services.metrics import Outcome, ServiceMetrics
from services.runtime import ConsumeLoop
from tests.unit.test_runtime_unit import (
    FAST,
    IN,
    TABLE,
    EchoHandler,
    FakeConsumer,
    FakeProducer,
    make_loop,
    record,
    until,
)

pytestmark = pytest.mark.timeout(10)


class ListeningHandler(EchoHandler):
    """Logs every hook call, with whether a batch was in hand at that moment."""

    def __init__(self, log: list[str]) -> None:
        super().__init__(log)
        self.in_batch = False
        self.calls: list[tuple[str, frozenset[tuple[str, int]], bool]] = []
        self.fail = False

    async def checkpoint(self) -> None:
        self.log.append("checkpoint")

    async def on_partitions_revoked(self, partitions: frozenset[tuple[str, int]]) -> None:
        self.calls.append(("revoked", partitions, self.in_batch))
        self.log.append("hook revoked")
        if self.fail:
            raise RuntimeError("hook bug")

    async def on_partitions_assigned(self, partitions: frozenset[tuple[str, int]]) -> None:
        self.calls.append(("assigned", partitions, self.in_batch))
        self.log.append("hook assigned")
        if self.fail:
            raise RuntimeError("hook bug")


def test_listener_is_detected_structurally() -> None:
    assert isinstance(ListeningHandler([]), PartitionListener)
    assert not isinstance(EchoHandler(), PartitionListener)


async def test_revoke_is_told_after_the_batch_in_hand_was_committed() -> None:
    log: list[str] = []
    producer, consumer = FakeProducer(log, hold=True), FakeConsumer(log)
    handler = ListeningHandler(log)
    loop = make_loop(handler, producer)

    async def run_batch() -> None:
        async with loop._lock:  # as run() does
            handler.in_batch = True
            await loop.process_batch([record(0), record(1, partition=1)], consumer)
            handler.in_batch = False

    task = asyncio.create_task(run_batch())
    await until(lambda: bool(producer.pending), producer.changed)
    revoke = asyncio.create_task(loop.on_revoked({Partition(IN, 0), Partition(IN, 1)}))
    await asyncio.sleep(0.01)  # a negative can only be shown by giving it time
    assert handler.calls == [], "the handler must not hear of the revoke before the commit"
    producer.release()
    await asyncio.wait_for(asyncio.gather(task, revoke), 1)
    assert handler.calls == [("revoked", frozenset({(IN, 0), (IN, 1)}), False)]
    assert log.index("checkpoint") < log.index("commit") < log.index("hook revoked")


async def test_assignment_is_told_with_the_partitions() -> None:
    log: list[str] = []
    handler = ListeningHandler(log)
    loop = make_loop(handler, FakeProducer(log))
    await loop.on_assigned({Partition(IN, 3)})
    await loop.on_assigned(set())  # an empty assignment is not worth a call
    assert handler.calls == [("assigned", frozenset({(IN, 3)}), False)]
    assert loop.assigned == frozenset({Partition(IN, 3)})


async def test_assignment_waits_for_the_batch_in_hand() -> None:
    log: list[str] = []
    producer, consumer = FakeProducer(log, hold=True), FakeConsumer(log)
    handler = ListeningHandler(log)
    loop = make_loop(handler, producer)

    async def run_batch() -> None:
        async with loop._lock:
            handler.in_batch = True
            await loop.process_batch([record(0)], consumer)
            handler.in_batch = False

    task = asyncio.create_task(run_batch())
    await until(lambda: bool(producer.pending), producer.changed)
    assign = asyncio.create_task(loop.on_assigned({Partition(IN, 2)}))
    await asyncio.sleep(0.01)
    assert handler.calls == []
    producer.release()
    await asyncio.wait_for(asyncio.gather(task, assign), 1)
    assert handler.calls == [("assigned", frozenset({(IN, 2)}), False)]


async def test_a_failing_hook_does_not_break_the_rebalance() -> None:
    log: list[str] = []
    handler = ListeningHandler(log)
    handler.fail = True
    metrics = ServiceMetrics("unit")
    loop = make_loop(handler, FakeProducer(log), metrics)
    await loop.on_assigned({Partition(IN, 0)})
    await loop.on_revoked({Partition(IN, 0)})
    assert [c[0] for c in handler.calls] == ["assigned", "revoked"]
    assert metrics.get(Outcome.HANDLER_ERRORS) == 2
    assert loop.assigned == frozenset()
    assert not loop._lock.locked()


async def test_a_revoke_that_times_out_is_still_told() -> None:
    """The partitions are gone whether or not the batch finished: the handler must drop them
    (the runtime will not commit them: they are no longer assigned)."""
    log: list[str] = []
    changed = asyncio.Event()
    producer = FakeProducer(log, changed=changed)
    consumer = FakeConsumer(log, [record(0)], changed=changed)
    gate, entered = asyncio.Event(), asyncio.Event()

    class Stuck(ListeningHandler):
        async def handle(self, record: InboundRecord) -> list[Outbound]:
            entered.set()
            await gate.wait()
            return await super().handle(record)

    handler = Stuck(log)
    settings = dataclasses.replace(FAST, rebalance_timeout_s=0.05)
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
    await asyncio.wait_for(loop.on_revoked({Partition(IN, 0)}), 1)
    assert handler.calls == [("revoked", frozenset({(IN, 0)}), False)]
    gate.set()
    loop.stop()
    await asyncio.wait_for(task, 1)
