"""What the local Kafka API broker costs per record as its log grows.

The embedded broker (Tansu, memory storage) keeps every record: no retention, no compaction
(`docs/design.md` §5), so a long or large run makes it hold more and more. For each size of the
topic (4 partitions, 300-byte records, as telemetry), it measures Tansu's CPU per record while
`--followers` consumers follow the end of the topic (as the services do) and one producer sends
single records and awaits each ack (acks=all, no linger: as the gateway does, one device
message at a time). The ceiling is the same figure on an empty topic, so `ratio` (ceiling /
value) is 1 when holding more costs nothing and falls as it costs more.

    .venv/bin/python -m benchmarks.kafka_log [--held 0,50000,200000,400000] [--followers 6]

Prints one JSON line per held size and figure: `broker_cpu_ms_per_record` (Tansu's CPU over
the records produced while followed) and `records_per_s` (what the one producer reached),
each `{"benchmark", "figure", "unit", "value", "ceiling", "ratio", "held", ...}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from benchmarks.cpu import host, process_cpu_s
from brokers.tansu import TansuBroker

TOPIC = "kafka-log"
RECORD = b"x" * 300
FILL_BATCH = 10_000


async def _fill(producer: AIOKafkaProducer, count: int) -> None:
    """`count` records, batched (the filling is not measured)."""
    for start in range(0, count, FILL_BATCH):
        n = min(FILL_BATCH, count - start)
        sent = [await producer.send(TOPIC, RECORD, key=str(i).encode()) for i in range(n)]
        await asyncio.gather(*sent)


async def _followed(bootstrap: str, pid: int, followers: int, seconds: float) -> tuple[int, float]:
    """(records produced one by one, Tansu CPU seconds) while `followers` consumers read."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    consumers = [
        AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="latest")
        for _ in range(followers)
    ]
    await producer.start()
    for consumer in consumers:
        await consumer.start()
        await consumer.getmany(timeout_ms=1000)  # joined, at the end
    stop = asyncio.Event()

    async def follow(consumer: AIOKafkaConsumer) -> None:
        while not stop.is_set():
            await consumer.getmany(timeout_ms=200)

    try:
        async with asyncio.TaskGroup() as group:
            for i, consumer in enumerate(consumers):
                group.create_task(follow(consumer), name=f"kafka-log:follower-{i}")
            cpu0, end, sent = process_cpu_s(pid), time.perf_counter() + seconds, 0
            while time.perf_counter() < end:
                await asyncio.wait_for(
                    await producer.send(TOPIC, RECORD, key=str(sent).encode()), 10
                )
                sent += 1
            cpu = process_cpu_s(pid) - cpu0
            stop.set()
    finally:
        for consumer in consumers:
            await consumer.stop()
        await producer.stop()
    return sent, cpu


async def measure(held: Sequence[int], followers: int, seconds: float) -> list[dict[str, object]]:
    """The benchmark's lines, one pair per size in `held` (ascending)."""
    lines: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="fedmoe-kafka-log-") as tmp:
        async with TansuBroker(Path(tmp)) as tansu:
            assert tansu.pid is not None
            admin = AIOKafkaAdminClient(bootstrap_servers=tansu.bootstrap)
            await admin.start()
            try:
                await admin.create_topics([NewTopic(TOPIC, 4, 1)])
            finally:
                await admin.close()
            filler = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all", linger_ms=5)
            await filler.start()
            try:
                holding, ceiling = 0, dict[str, float]()
                for size in sorted(held):
                    await _fill(filler, size - holding)
                    sent, cpu = await _followed(tansu.bootstrap, tansu.pid, followers, seconds)
                    holding = size + sent
                    # figure: (unit, value, whether more is better)
                    figures = {
                        "broker_cpu_ms_per_record": ("ms", 1000 * cpu / max(sent, 1), False),
                        "records_per_s": ("1/s", sent / seconds, True),
                    }
                    for figure, (unit, value, more_is_better) in figures.items():
                        base = ceiling.setdefault(figure, value)
                        num, den = (value, base) if more_is_better else (base, value)
                        lines.append(
                            {
                                "benchmark": "kafka_log",
                                "figure": figure,
                                "unit": unit,
                                "value": round(value, 3),
                                "ceiling": round(base, 3),
                                "ratio": round(num / den, 3) if den else None,
                                "held": size,
                                "followers": followers,
                                "records": sent,
                            }
                        )
            finally:
                await filler.stop()
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kafka_log", description=__doc__)
    parser.add_argument(
        "--held", default="0,50000,200000,400000", help="records held, comma-separated"
    )
    parser.add_argument("--followers", type=int, default=6, help="consumers following the end")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured per size")
    args = parser.parse_args(argv)
    held = [int(x) for x in args.held.split(",")]
    machine = host()
    for line in asyncio.run(measure(held, args.followers, args.seconds)):
        print(json.dumps({**line, **machine}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
