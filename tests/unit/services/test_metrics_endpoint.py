"""The metrics endpoint: Prometheus names the soak and Grafana read, health and readiness."""

from __future__ import annotations

import asyncio
from pathlib import Path

from schemas.messages import ExpertLoad, UpdateAck
from services.handler import Outbound
from services.metrics import Histogram, Latency, Outcome, ServiceMetrics, prometheus_registry
from services.runtime.http import MetricsServer


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    async with asyncio.timeout(5):
        data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


def _ack(status: str) -> Outbound:
    ack = UpdateAck(
        message_id=f"a-{status}", device_id="dev-00001", round=3, timestamp=0.0,
        update_id="u", part="expert-0", status=status,
    )  # fmt: skip
    return Outbound("acks", "dev-00001", ack)


def _load(cv: float) -> Outbound:
    load = ExpertLoad(
        message_id="l", device_id="load-monitor", round=3, timestamp=0.0,
        assigned_clients=(1, 2), accepted_updates=(1, 2), samples_routed=(1.0, 2.0),
        rounds_since_update=(0, 0), cv=cv, max_mean=1.3,
    )  # fmt: skip
    return Outbound("expert-load", None, load)


def test_metrics_health_and_readiness_answer() -> None:
    async def scenario() -> None:
        metrics = ServiceMetrics("aggregator", notes={"late": 2})
        metrics.inc(Outcome.RECEIVED, 5)
        metrics.dead_letter("OversizeError")
        metrics.observe(Latency.COMMIT, 0.003)
        metrics.outputs([_ack("applied"), _ack("applied"), _ack("late"), _load(0.25)])
        metrics.set_lag("ns.updates", 2, 7)
        server = MetricsServer(
            prometheus_registry(metrics), lambda: metrics.ready(5), host="127.0.0.1", port=0
        )
        async with server:
            status, body = await _get(server.port, "/metrics")
            assert status == 200
            for line in (
                'fedmoe_records_total{outcome="received",service="aggregator"} 5.0',
                'fedmoe_dead_letters_total{error="OversizeError",service="aggregator"} 1.0',
                'fedmoe_verdicts_total{service="aggregator",status="applied"} 2.0',
                'fedmoe_verdicts_total{service="aggregator",status="late"} 1.0',
                'fedmoe_service_notes_total{note="late",service="aggregator"} 2.0',
                'fedmoe_consumer_lag{partition="2",service="aggregator",topic="ns.updates"} 7.0',
                'fedmoe_load_cv{service="aggregator"} 0.25',
                'fedmoe_commit_latency_seconds_count{service="aggregator"} 1.0',
                'fedmoe_produce_latency_seconds_count{service="aggregator"} 0.0',
                'fedmoe_handler_errors_total{service="aggregator"} 0.0',
            ):
                assert line in body, line
            assert "process_resident_memory_bytes" in body
            assert (await _get(server.port, "/healthz"))[0] == 200
            status, why = await _get(server.port, "/readyz")
            assert (status, why.strip()) == (503, "not consuming")
            metrics.running, metrics.polls = True, 1
            status, why = await _get(server.port, "/readyz")
            assert (status, why.strip()) == (503, "lag 7 > 5")
            metrics.set_lag("ns.updates", 2, 5)
            assert (await _get(server.port, "/readyz"))[0] == 200
            metrics.forget_lags([])
            assert metrics.max_lag == 0
            assert (await _get(server.port, "/nope"))[0] == 404

    asyncio.run(scenario())


def test_histogram_buckets_are_cumulative() -> None:
    hist = Histogram(bounds=(0.1, 1.0))
    for value in (0.05, 0.5, 0.5, 3.0):
        hist.observe(value)
    assert hist.buckets() == [("0.1", 1.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert hist.total == 4.05


def test_partition_ends_come_from_the_wrapped_client() -> None:
    from aiokafka.structs import TopicPartition

    from brokers.kafka import Partition
    from services.runtime.lag import highwaters

    class Inner:
        def highwater(self, tp: TopicPartition) -> int | None:
            return {("t", 0): 40, ("t", 1): None}.get((tp.topic, tp.partition))

    class Wrapper:
        _consumer = Inner()

    class Public:
        def highwaters(self) -> dict[tuple[str, int], int]:
            return {("t", 3): 9}

    owned = [Partition("t", 0), Partition("t", 1)]
    assert highwaters(Wrapper(), owned) == {("t", 0): 40}
    assert highwaters(Public(), owned) == {("t", 3): 9}
    assert highwaters(object(), owned) == {}


def test_metrics_ports_lie_below_the_ephemeral_range(tmp_path: Path) -> None:
    import random
    import socket

    from services.runtime.http import _ephemeral_low, metrics_port

    ranges = tmp_path / "range"
    ranges.write_text("40000\t60999\n")
    assert _ephemeral_low(str(ranges)) == 40000
    assert _ephemeral_low(str(tmp_path / "missing")) == 32768
    port = metrics_port(random.Random(1))
    assert 1024 <= port < _ephemeral_low()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # free to bind
