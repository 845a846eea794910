"""The runtime against a real Kafka API (Tansu): no record lost across a SIGKILL, and a bad
record dead-lettered with its offset committed."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from brokers.settings import BrokerSettings
from schemas import DeadLetter, DeviceStatus, Message, encode
from schemas.topics import Topic
from services.runtime import RuntimeSettings, ServiceRuntime
from tests.integration.programs.echo_service import EchoHandler
from tests.integration.programs.harness import (
    ServiceProcess,
    TopicCollector,
    broker_environ,
    committed_offsets,
    produce,
)

N_RECORDS = 1000


def _status(i: int, reason: str = "") -> bytes:
    msg = DeviceStatus(
        message_id=f"m{i}", device_id=f"dev-{i % 50}", round=1, timestamp=1.0, online=True,
        reason=reason,
    )  # fmt: skip
    return encode(msg)


def _ids(messages: list[Message], prefix: str = "out-") -> set[str]:
    return {m.message_id for m in messages if m.message_id.startswith(prefix)}


@pytest.mark.timeout(150)
async def test_sigkill_mid_stream_loses_no_record(
    broker_env: BrokerSettings, tmp_path: Path
) -> None:
    table = broker_env.topic_table()
    source, sink = table.name(Topic.TELEMETRY), table.name(Topic.PROFILES)
    group = f"{broker_env.namespace}-echo"
    await produce(
        broker_env, source, [(f"dev-{i % 50}".encode(), _status(i)) for i in range(N_RECORDS)]
    )
    env = broker_environ(
        broker_env,
        FEDMOE_RUNTIME_MAX_BATCH="50",
        FEDMOE_RUNTIME_SESSION_TIMEOUT_S="6",
        FEDMOE_RUNTIME_METRICS_INTERVAL_S="1",
    )
    argv = ["-m", "tests.integration.programs.echo_service", "--input", source,
            "--output", sink, "--group", group, "--delay-ms", "3"]  # fmt: skip
    service = ServiceProcess(argv, env, tmp_path / "echo.log")
    expected = {f"out-m{i}" for i in range(N_RECORDS)}
    async with TopicCollector(broker_env, sink) as outputs:
        try:
            await service.start()
            await outputs.wait_until(lambda ms: len(_ids(ms)) >= 250, 60, "250 outputs")
            await service.kill()
            at_kill = len(_ids(outputs.messages))
            await service.start()
            await outputs.wait_until(lambda ms: _ids(ms) >= expected, 90, "every output")
            assert await service.terminate() == 0
        except BaseException:
            print(service.log_text()[-6000:])
            raise
        await asyncio.sleep(0)  # let the collector settle the last batch it holds
        produced = [m.message_id for m in outputs.messages]
    duplicates = len(produced) - len(set(produced))
    print(
        f"\nruntime SIGKILL: {N_RECORDS} inputs, {len(set(produced))} distinct outputs, "
        f"{len(produced)} records, {duplicates} duplicates; killed after {at_kill} outputs"
    )
    assert _ids(outputs.messages) == expected
    assert 0 < at_kill < N_RECORDS, "the kill must land mid-stream"
    committed = await committed_offsets(broker_env, group, source)
    assert sum(committed.values()) == N_RECORDS, committed


@pytest.mark.timeout(60)
async def test_bad_records_are_dead_lettered_and_committed(broker_env: BrokerSettings) -> None:
    table = broker_env.topic_table()
    source, sink = table.name(Topic.TELEMETRY), table.name(Topic.PROFILES)
    dlq = table.name(Topic.DEAD_LETTER)
    garbage = b"\x93\x01\x02" + b"\xff" * 100
    key = b"dev-1"  # one key: one partition, so the order (and the offsets) are known
    await produce(
        broker_env,
        source,
        [(key, _status(0)), (key, garbage), (key, _status(2, reason="reject")), (key, _status(3))],
    )
    settings = RuntimeSettings(poll_timeout_s=0.2, session_timeout_s=6.0, drain_timeout_s=10.0)
    runtime = ServiceRuntime(
        broker_env,
        name="echo",
        handler=EchoHandler(sink, 0.0),
        inputs=[Topic.TELEMETRY],
        group_id="echo-dlq",
        settings=settings,
    )
    async with (
        TopicCollector(broker_env, dlq) as letters,
        TopicCollector(broker_env, sink) as outs,
        runtime,
    ):
        await outs.wait_until(lambda ms: _ids(ms) >= {"out-m0", "out-m3"}, 30, "outputs")
        await letters.wait_until(lambda ms: len(ms) >= 2, 30, "two dead letters")
        runtime.stop()
        await asyncio.wait_for(runtime.wait(), 20)
    undecodable, rejected = sorted(
        (m for m in letters.messages if isinstance(m, DeadLetter)), key=lambda d: d.message_id
    )
    assert undecodable.source == source
    assert undecodable.original == garbage
    assert undecodable.error.endswith("Error")
    assert undecodable.reason
    assert rejected.error == "InvalidPayload"
    assert rejected.reason.startswith("rejected-by-handler")
    assert rejected.device_id == "dev-2"
    assert letters.keys == [source.encode()] * 2
    snap = runtime.metrics.snapshot()
    assert snap["dead_lettered"] == 2
    assert snap["handled"] == 2
    assert snap["produced"] == 4
    committed = await committed_offsets(broker_env, "echo-dlq", source)
    assert sum(committed.values()) == 4, committed


@pytest.mark.timeout(150)
async def test_rebalances_commit_finished_work(broker_env: BrokerSettings, tmp_path: Path) -> None:
    """A second instance joins mid-stream, then the first leaves (SIGTERM): both rebalances
    commit the work in hand on revoke, so (almost) nothing is redone."""
    table = broker_env.topic_table()
    source, sink = table.name(Topic.TELEMETRY), table.name(Topic.PROFILES)
    group = f"{broker_env.namespace}-echo"
    await produce(
        broker_env, source, [(f"dev-{i % 50}".encode(), _status(i)) for i in range(N_RECORDS)]
    )
    env = broker_environ(
        broker_env,
        FEDMOE_RUNTIME_MAX_BATCH="50",
        FEDMOE_RUNTIME_SESSION_TIMEOUT_S="6",
        FEDMOE_RUNTIME_METRICS_INTERVAL_S="1",
    )
    argv = ["-m", "tests.integration.programs.echo_service", "--input", source,
            "--output", sink, "--group", group, "--delay-ms", "5"]  # fmt: skip
    first = ServiceProcess(argv, env, tmp_path / "first.log")
    second = ServiceProcess(argv, env, tmp_path / "second.log")
    expected = {f"out-m{i}" for i in range(N_RECORDS)}
    async with TopicCollector(broker_env, sink) as outputs:
        try:
            await first.start()
            await outputs.wait_until(lambda ms: len(_ids(ms)) >= 150, 60, "150 outputs")
            await second.start()
            await outputs.wait_until(lambda ms: len(_ids(ms)) >= 600, 90, "600 outputs")
            assert await first.terminate() == 0
            await outputs.wait_until(lambda ms: _ids(ms) >= expected, 90, "every output")
            assert await second.terminate() == 0
        except BaseException:
            print(first.log_text()[-4000:], second.log_text()[-4000:])
            raise
        finally:
            await first.kill()
            await second.kill()
        produced = [m.message_id for m in outputs.messages]
    metrics = [_final_metrics(p.log_text()) for p in (first, second)]
    print(
        f"\nruntime rebalances: {len(produced)} records for {N_RECORDS} inputs, "
        f"{len(produced) - len(set(produced))} duplicates; "
        + "; ".join(
            f"{n}: handled {m.get('handled')}, rebalances {m.get('rebalances')}, "
            f"commit_failed {m.get('commit_failed')}, dropped_stale {m.get('dropped_stale')}"
            for n, m in zip(("first", "second"), metrics, strict=True)
        )
    )
    assert _ids(outputs.messages) == expected
    assert all(int(str(m.get("rebalances", 0))) >= 1 for m in metrics)
    committed = await committed_offsets(broker_env, group, source)
    assert sum(committed.values()) == N_RECORDS, committed


def _final_metrics(log_text: str) -> dict[str, object]:
    lines = re.findall(r"metrics (\{.*\})", log_text)
    return dict(json.loads(lines[-1])) if lines else {}
