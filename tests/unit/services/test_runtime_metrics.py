"""The loop feeds the metrics endpoint: lag per owned partition after each poll, commit and
produce latency, the handler's outputs by type, dead letters by error."""

from __future__ import annotations

import asyncio

from brokers.kafka import Partition
from services.metrics import ServiceMetrics, prometheus_registry
from tests.unit.test_runtime_unit import (
    IN,
    EchoHandler,
    FakeConsumer,
    FakeProducer,
    make_loop,
    record,
)


class EndsConsumer(FakeConsumer):
    """A fake consumer whose partition 0 ends at offset 10."""

    def highwaters(self) -> dict[tuple[str, int], int]:
        return {(IN, 0): 10}


def _value(metrics: ServiceMetrics, name: str, **labels: str) -> float | None:
    for family in prometheus_registry(metrics).collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def test_lag_latency_and_outputs_reach_the_metrics() -> None:
    log: list[str] = []
    metrics = ServiceMetrics("unit")
    consumer = EndsConsumer(log, [record(0), record(1), record(2, b"\xc1bad")])
    loop = make_loop(EchoHandler(), FakeProducer(log), metrics)
    await loop.on_assigned({Partition(IN, 0)})
    task = asyncio.create_task(loop.run(consumer))
    async with asyncio.timeout(5):
        while not consumer.commits:
            await consumer.changed.wait()
            consumer.changed.clear()
    loop.stop()
    await task
    assert metrics.polls >= 1
    assert metrics.max_lag == 7  # offsets 0-2 read of 10
    assert _value(metrics, "fedmoe_consumer_lag", topic=IN, partition="0") == 7
    assert _value(metrics, "fedmoe_produced_messages_total", type="DeviceStatus") == 2
    assert _value(metrics, "fedmoe_dead_letters_total", error="MalformedError") == 1
    assert _value(metrics, "fedmoe_commit_latency_seconds_count") == 1
    assert _value(metrics, "fedmoe_produce_latency_seconds_count") == 3  # 2 outputs + 1 letter
    assert metrics.ready(max_lag=10) == (False, "not consuming")  # the runtime sets running
    metrics.running = True
    assert metrics.ready(max_lag=10) == (True, "ready")
    assert metrics.ready(max_lag=5) == (False, "lag 7 > 5")
