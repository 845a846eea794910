"""Replay and recording throughput beside the brokers' ceilings; schedule error at 1× and 10×.

    python -m benchmarks.replay [--records N] [--kinds mqtt,kafka,schedule,recorder]

Embedded brokers (anonymous MQTT), one synthetic recording of real `Telemetry` envelopes
(~300 B each, `--devices` devices, 2 ms apart). Figures, one JSON line each,
`{"benchmark": "replay", "figure", "unit", "value", "ceiling", "ratio", ...params}`:

- `mqtt_max`: `fedmoe replay --speed max` into Mosquitto (QoS 1, a window of PUBACKs in
  flight), records acked per second; ceiling: Mosquitto's own C clients, `mosquitto_pub -l`
  → Mosquitto → `mosquitto_sub`, QoS 1, same payload size (`benchmarks.gateway`).
- `kafka_max`: the same records as Kafka records into Tansu; ceiling: aiokafka's producer
  alone on the same records (every send enqueued, then every ack awaited).
- `recorder`: records per second `fedmoe record` wrote while the replay fed it at max
  (recorder-limited when below the replay's rate); `recorder_cpu`: the recorder's own work per
  record (envelope decode, buffer, Parquet row groups) without a broker. Ceiling of both: the
  MQTT replay's rate (what fed it) and the C clients' rate.
- `schedule_1x`, `schedule_10x`: p50 / p99 of (sent − due) in ms, a timed replay spanning
  `--span-s` seconds at 1× and at 10×; no ceiling (0 is ideal; `ratio` is null).
- `parity_rounds_equal` (`--kinds parity`): a `fedmoe demo --record` of `--demo-devices`
  devices, replayed with `--follow-rounds` into a fresh deployment of the same scenario: rounds
  whose live assignments equal the recorded ones; ceiling: rounds compared.
- `recorder_overhead` (`--kinds overhead`): median round time (matcher log, RoundClosed to
  RoundClosed) of the same demo with `--record`; ceiling: without.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.cpu import usable_cpus
from benchmarks.gateway import c_client_ceiling
from brokers.kafka import KafkaProducer
from brokers.local import LocalBrokers
from brokers.settings import BrokerSettings, LocalBrokerSettings
from recording.format import KAFKA, MQTT, Record
from recording.recorder import Recorder
from recording.replayer import Renamer, Replayer
from recording.settings import RecordSettings, ReplaySettings
from recording.writer import RecordingWriter
from schemas import encode
from schemas.messages import Telemetry


def telemetry(device: int, index: int) -> bytes:
    """One realistic Telemetry envelope (8 experts' histogram)."""
    return encode(
        Telemetry(
            message_id=f"t-{device}-{index}",
            device_id=f"dev-{device:05d}",
            round=index,
            timestamp=time.time(),
            device_type=device % 4,
            compute_ms_per_sample=4.0 + device % 7,
            bandwidth_kbps=4000.0 + 10 * device,
            memory_mb=2048.0,
            battery=0.8,
            num_samples=40,
            routing_histogram=tuple(float(i + device % 3) for i in range(8)),
        )
    )


def synthetic(n: int, devices: int, gap_ns: int, source: str) -> list[Record]:
    """`n` telemetry records, `gap_ns` apart, round-robin over `devices`."""
    out = []
    for i in range(n):
        d = i % devices
        topic = f"fleet/dev-{d:05d}/telemetry" if source == MQTT else "fedmoe.telemetry"
        out.append(
            Record.observed(
                i * gap_ns,
                source,
                topic,
                telemetry(d, i),
                qos=1 if source == MQTT else None,
                retain=False if source == MQTT else None,
                key=f"dev-{d:05d}".encode() if source == KAFKA else None,
                partition=0 if source == KAFKA else None,
                offset=i if source == KAFKA else None,
            )
        )
    return out


def line(figure: str, unit: str, value: float, ceiling: float | None, **params: Any) -> None:
    """Print one JSON line."""
    ratio = round(value / ceiling, 3) if ceiling else None
    row = {
        "benchmark": "replay",
        "figure": figure,
        "unit": unit,
        "value": round(value, 1) if unit != "ms" else round(value, 3),
        "ceiling": round(ceiling, 1) if ceiling else None,
        "ratio": ratio,
        "cpus": usable_cpus(),
        **params,
    }
    print(json.dumps(row), flush=True)


async def replay_rate(
    broker: BrokerSettings, namespace: str, records: list[Record], window: int
) -> tuple[float, dict[str, Any]]:
    """Records acked per second of a `--speed max` replay (wall time, drain included)."""
    replayer = Replayer(
        broker,
        ReplaySettings(speed="max", types="all", window=window),
        records,
        Renamer("fleet", namespace, "fedmoe", namespace),
    )
    start = time.monotonic()
    report = await replayer.run()
    return report["acked"] / (time.monotonic() - start), report


async def kafka_ceiling(broker: BrokerSettings, topic: str, records: list[Record]) -> float:
    """aiokafka's producer alone: every record enqueued, then every ack awaited."""
    async with KafkaProducer(broker, client_id="bench-ceiling") as producer:
        start = time.monotonic()
        acks = [await producer.send(topic, r.key, r.payload) for r in records]
        for ack in acks:
            await ack
        return len(records) / (time.monotonic() - start)


def recorder_cpu(records: list[Record], path: Path) -> float:
    """Records per second of the recorder's own work (decode, buffer, row groups)."""
    start = time.monotonic()
    with RecordingWriter(path, max_group_records=10_000) as writer:
        for r in records:
            writer.append(Record.observed(time.time_ns(), MQTT, r.topic, r.payload, qos=1))
    return len(records) / (time.monotonic() - start)


async def measure(args: argparse.Namespace) -> None:
    kinds = set(args.kinds.split(",")) - {"parity", "overhead"}
    run_dir = Path(tempfile.mkdtemp(prefix="fedmoe-bench-replay-"))
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    local = LocalBrokerSettings(
        run_dir=str(run_dir / "brokers"), namespace=namespace, mqtt_insecure=True
    )
    n = args.records
    mqtt_records = synthetic(n, args.devices, 2_000_000, MQTT)
    size = len(mqtt_records[0].payload)
    params = {"records": n, "message_bytes": size, "window": args.window}
    try:
        async with LocalBrokers(local) as brokers:
            broker = brokers.broker_settings(namespace, mqtt_root=namespace)
            port = int(broker.mqtt_url.rsplit(":", 1)[1])
            c_rate = 0.0
            if kinds & {"mqtt", "recorder"}:
                c_rate, _ = await asyncio.to_thread(c_client_ceiling, port, size, n)
            mqtt_rate = 0.0
            if "mqtt" in kinds:
                mqtt_rate, report = await replay_rate(broker, namespace, mqtt_records, args.window)
                line("mqtt_max", "msg/s", mqtt_rate, c_rate, acked=report["acked"], **params)
            if "kafka" in kinds:
                kafka_records = synthetic(n, args.devices, 2_000_000, KAFKA)
                rate, report = await replay_rate(broker, namespace, kafka_records, args.window)
                ceiling = await kafka_ceiling(broker, f"{namespace}.telemetry", kafka_records)
                line("kafka_max", "msg/s", rate, ceiling, acked=report["acked"], **params)
            if "recorder" in kinds:
                path = run_dir / "rec.parquet"
                settings = RecordSettings(mqtt="telemetry", flush_s=1.0, progress_s=0)
                with RecordingWriter(path) as writer:
                    recorder = Recorder(broker, settings, writer, progress=None)
                    task = asyncio.create_task(recorder.run())
                    async with asyncio.timeout(30):
                        await recorder.ready()
                    start = time.monotonic()
                    fed, _ = await replay_rate(broker, namespace, mqtt_records, args.window)
                    async with asyncio.timeout(300):
                        await recorder.wait_records(n)
                    rec_rate = n / (time.monotonic() - start)
                    recorder.stop()
                    await task
                line(
                    "recorder",
                    "msg/s",
                    rec_rate,
                    fed,
                    c_client_ceiling=round(c_rate, 1),
                    file_bytes=path.stat().st_size,
                    **params,
                )
                cpu = recorder_cpu(mqtt_records, run_dir / "cpu.parquet")
                line("recorder_cpu", "msg/s", cpu, c_rate, **params)
            if "schedule" in kinds:
                for speed in (1.0, 10.0):
                    gap = int(args.span_s * 1e9 / n)
                    records = synthetic(n, args.devices, gap, MQTT)
                    replayer = Replayer(
                        broker,
                        ReplaySettings(speed=str(speed), types="all", window=args.window),
                        records,
                        Renamer("fleet", namespace, "fedmoe", namespace),
                    )
                    report = await replayer.run()
                    for q in ("p50", "p99"):
                        line(
                            f"schedule_{int(speed)}x_{q}",
                            "ms",
                            report[f"error_{q}_ms"],
                            None,
                            speed=speed,
                            span_s=round(args.span_s / speed, 3),
                            rate_per_s=report["rate_per_s"],
                            nominal_rate_per_s=round(n / (args.span_s / speed), 1),
                            **params,
                        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def demo(out: Path, args: argparse.Namespace, *, record: bool) -> tuple[dict[str, Any], Path]:
    """`fedmoe demo` as a user runs it (its own process); its summary and output dir."""
    argv = [
        sys.executable, "-m", "fedmoe", "demo", "--regime", args.regime,
        "--devices", str(args.demo_devices), "--rounds", str(args.demo_rounds),
        "--seed", str(args.seed), "--out", str(out), "--timeout-s", "500",
    ]  # fmt: skip
    if record:
        argv += ["--record", str(out / "run.parquet")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=560)
    if proc.returncode != 0:
        raise SystemExit(f"demo failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads((out / "summary.json").read_text()), out


_CLOSED = re.compile(r"^(\S+ \S+) INFO services\.matcher\.handler: matcher: closed round (\d+)")


def round_seconds(matcher_log: Path) -> list[float]:
    """Seconds between successive RoundClosed of rounds >= 1, from the matcher's log."""
    times = {}
    for text in matcher_log.read_text().splitlines():
        m = _CLOSED.match(text)
        if m:
            stamp = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
            times[int(m.group(2))] = stamp.timestamp()
    ordered = [times[k] for k in sorted(times)]
    return [b - a for a, b in itertools.pairwise(ordered)]


async def parity(args: argparse.Namespace, out: Path) -> None:
    """Record a demo; replay it round-synchronously into a fresh deployment of its scenario;
    compare the live matcher's assignments with the recorded ones, round by round."""
    from fedmoe.demo.deployment import deployment
    from fedmoe.scenario import ScenarioSettings
    from fedmoe.settings import load_settings
    from recording.reader import open_recording
    from recording.replayer import renamer_for, selected

    summary, run = await asyncio.to_thread(demo, out / "recorded", args, record=True)
    (out / "recorded-summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    recording = open_recording(run / "run.parquet")
    scenario = load_settings(ScenarioSettings, {**os.environ, **recording.info["scenario"]})
    settings = ReplaySettings(speed="1", follow_rounds=True, idle_timeout_s=120)
    async with deployment(out / "live", scenario, os.environ, rounds=args.demo_rounds) as live:
        records = selected(recording, settings)
        report = await Replayer(
            live.broker, settings, records, renamer_for(recording, records, live.broker)
        ).run()
    (out / "parity.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    p = report["parity"]
    line(
        "parity_rounds_equal",
        "rounds",
        p["rounds_equal"],
        p["rounds_compared"],
        regime=args.regime,
        devices=args.demo_devices,
        rounds=args.demo_rounds,
        seed=args.seed,
        recorded_records=recording.num_records,
        common_pairs=sum(r["common_pairs"] for r in p["rounds"]),
        recorded_pairs=sum(r["recorded_pairs"] for r in p["rounds"]),
        live_pairs=sum(r["live_pairs"] for r in p["rounds"]),
        recorded_round_s=round(statistics.fmean(round_seconds(run / "logs" / "matcher.log")), 3),
    )


def overhead(args: argparse.Namespace, out: Path) -> None:
    """Round time of the same demo without and with `--record`."""
    gaps = {}
    for record in (False, True):
        _, run = demo(out / ("with" if record else "without"), args, record=record)
        gaps[record] = round_seconds(run / "logs" / "matcher.log")
    line(
        "recorder_overhead",
        "s/round",
        statistics.median(gaps[True]),
        statistics.median(gaps[False]),
        note="value: median round time with --record; ceiling: without",
        round_s_with=[round(g, 3) for g in gaps[True]],
        round_s_without=[round(g, 3) for g in gaps[False]],
        regime=args.regime,
        devices=args.demo_devices,
        rounds=args.demo_rounds,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replay", description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--window", type=int, default=256, help="publishes in flight")
    parser.add_argument("--span-s", type=float, default=10.0, help="schedule runs: 1x span")
    parser.add_argument(
        "--kinds", default="mqtt,kafka,recorder,schedule", help="also: parity, overhead (demos)"
    )
    parser.add_argument("--regime", default="fleet", help="parity / overhead: demo regime")
    parser.add_argument("--demo-devices", type=int, default=30)
    parser.add_argument("--demo-rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("replay-bench"), help="demo runs")
    args = parser.parse_args(argv)
    kinds = set(args.kinds.split(","))
    if kinds - {"parity", "overhead"}:
        asyncio.run(measure(args))
    if "parity" in kinds:
        asyncio.run(parity(args, args.out / "parity"))
    if "overhead" in kinds:
        overhead(args, args.out / "overhead")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
