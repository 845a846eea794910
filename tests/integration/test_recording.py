"""Record and replay through real brokers: a replay's every record lands in a recording, each
payload byte-identical; a timed replay keeps its schedule."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from brokers.settings import BrokerSettings
from recording.format import Record
from recording.recorder import Recorder
from recording.replayer import Renamer, Replayer
from recording.settings import RecordSettings, ReplaySettings
from recording.writer import RecordingWriter
from schemas import decode
from tests.unit.recording.helpers import kafka, small_fleet

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_replay_into_brokers_is_recorded_byte_for_byte(
    broker_env: BrokerSettings, tmp_path: Path, namespace: str
) -> None:
    broker = dataclasses.replace(broker_env, mqtt_root=namespace)
    source = small_fleet(rounds=3, devices=4)
    telemetry = next(r for r in source if r.type == "telemetry")
    source.append(kafka(source[-1].t_ns + 1, "rounds", telemetry.payload, 0))
    source.append(Record(source[-1].t_ns + 2, "mqtt", "fleet/dev-00009/update", b"\x00junk"))
    path = tmp_path / "rec.parquet"
    writer = RecordingWriter(path, info={"test": True}, max_group_records=8)
    settings = RecordSettings(
        mqtt="telemetry,status,update,assignment", kafka="rounds", flush_s=0.2, progress_s=0
    )
    with writer:
        recorder = Recorder(broker, settings, writer, progress=None)
        task = asyncio.create_task(recorder.run())
        async with asyncio.timeout(30):
            await recorder.ready()
        replay = Replayer(
            broker,
            ReplaySettings(speed="max", types="all"),
            source,
            Renamer("fleet", namespace, "fedmoe", namespace),
        )
        report = await replay.run()
        assert report["acked"] == len(source)
        assert report["failed"] == 0
        async with asyncio.timeout(30):
            await recorder.wait_records(len(source))
        recorder.stop()
        totals = await task
    assert totals["records"] == len(source)
    table = pq.read_table(path)  # plain pyarrow
    got = Counter(
        (t.split("/", 1)[-1].split(".", 1)[-1], p)
        for t, p in zip(
            table.column("topic").to_pylist(), table.column("payload").to_pylist(), strict=True
        )
    )
    want = Counter((r.topic.split("/", 1)[-1].split(".", 1)[-1], r.payload) for r in source)
    assert got == want
    rows = table.to_pylist()
    kafka_rows = [r for r in rows if r["source"] == "kafka"]
    assert len(kafka_rows) == 1
    assert kafka_rows[0]["key"] == b"k"
    assert kafka_rows[0]["type"] == "telemetry"
    assert {r["qos"] for r in rows if r["source"] == "mqtt"} == {1}


async def test_timed_replay_with_rewrite_keeps_schedule(
    broker_env: BrokerSettings, namespace: str
) -> None:
    broker = dataclasses.replace(broker_env, mqtt_root=namespace)
    source = [r for r in small_fleet(rounds=2, devices=3) if r.type == "telemetry"]
    replay = Replayer(
        broker,
        ReplaySettings(speed="4", rewrite=True, types="all"),
        source,
        Renamer("fleet", namespace, "fedmoe", namespace),
    )
    report = await replay.run()
    span = (source[-1].t_ns - source[0].t_ns) / 1e9 / 4
    assert report["sent"] == len(source)
    assert report["elapsed_s"] == pytest.approx(span, abs=0.2)
    assert report["error_p99_ms"] < 100
    assert all(decode(r.payload).message_id.startswith("t-") for r in source)


async def test_follow_rounds_against_a_scripted_live_system(
    broker_env: BrokerSettings, namespace: str
) -> None:
    """The live side is scripted here (RoundClosed retained on {root}/round, assignments):
    recorded round k goes out as the live round after each close, rewritten."""
    from brokers.mqtt import mqtt_client
    from schemas import encode
    from schemas.messages import RoundClosed
    from tests.unit.recording.helpers import assignment

    broker = dataclasses.replace(broker_env, mqtt_root=namespace)
    source = small_fleet(rounds=2, devices=3)  # recorded rounds 1 and 2, assignments included
    replay = Replayer(
        broker,
        ReplaySettings(speed="20", follow_rounds=True, idle_timeout_s=20),
        source,
        Renamer("fleet", namespace, "fedmoe", namespace),
    )
    seen: list[tuple[str, int]] = []
    live = mqtt_client(broker, client_id=f"live-{namespace}"[:60], persistent=False)

    def closed(r: int) -> bytes:
        return encode(
            RoundClosed(
                message_id=f"rc{r}",
                device_id="matcher",
                round=r,
                timestamp=0.0,
                reason="t",
                parts_closed=0,
            )
        )

    async with live:
        await live.subscribe(f"{namespace}/+/telemetry", qos=1, timeout=10)
        await live.publish(f"{namespace}/round", closed(10), qos=1, retain=True, timeout=10)
        task = asyncio.create_task(replay.run())

        async def until(n: int) -> None:
            async with asyncio.timeout(20):
                async for message in live.messages:
                    m = decode(bytes(message.payload))  # type: ignore[arg-type]
                    seen.append((m.device_id, m.round))
                    if len(seen) >= n:
                        return

        await until(3)  # recorded round 1 announced as live round 11
        for d in range(3):  # the live matcher assigns round 11 as the recording did
            a = assignment(f"dev-{d:05d}", 11, (d % 4,))
            await live.publish(f"{namespace}/dev-{d:05d}/assignment", encode(a), qos=1, timeout=10)
        await live.publish(f"{namespace}/round", closed(11), qos=1, retain=True, timeout=10)
        await until(6)  # recorded round 2 as live round 12
        await live.publish(f"{namespace}/round", closed(12), qos=1, retain=True, timeout=10)
        async with asyncio.timeout(30):
            report = await task
    assert sorted(seen) == sorted(
        [(f"dev-{d:05d}", 11) for d in range(3)] + [(f"dev-{d:05d}", 12) for d in range(3)]
    )
    assert report["round_map"] == {"11": 1, "12": 2}
    parity = report["parity"]
    assert (parity["rounds_compared"], parity["rounds_equal"]) == (2, 1)  # 12 had none live
