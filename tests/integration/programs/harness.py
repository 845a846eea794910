"""Test harness: spawn service processes, produce inputs, collect a topic, read commits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from brokers.settings import BrokerSettings
from schemas import Message, decode
from schemas.errors import SchemaError

REPO = Path(__file__).resolve().parents[3]


def broker_environ(broker: BrokerSettings, **extra: str) -> dict[str, str]:
    """The process environment for a service pointed at `broker` (plus `extra`)."""
    env = dict(os.environ)
    env.update(
        {
            "FEDMOE_KAFKA_BOOTSTRAP": broker.kafka_bootstrap,
            "FEDMOE_MQTT_URL": broker.mqtt_url,
            "FEDMOE_NAMESPACE": broker.namespace,
            "FEDMOE_MQTT_ROOT": broker.mqtt_root,
            "FEDMOE_KAFKA_ACKS": broker.kafka_acks,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class ServiceProcess:
    """One spawned service process; its stdout+stderr go to `log_path`."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"=== start {time.strftime('%X')}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *self.argv,
                cwd=REPO,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    async def kill(self) -> None:
        """SIGKILL: no drain, no commit, no goodbye to the brokers."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), 10)

    async def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait for a clean exit (SIGKILL after `timeout_s`)."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                await self.kill()
        assert self.proc.returncode is not None
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def exited(self) -> bool:
        return self.proc is not None and self.proc.returncode is not None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.kill()


@contextlib.asynccontextmanager
async def kafka_producer(broker: BrokerSettings) -> AsyncIterator[Any]:
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap_servers(), acks="all", linger_ms=5
    )
    await asyncio.wait_for(producer.start(), 20)
    try:
        yield producer
    finally:
        await asyncio.wait_for(producer.stop(), 20)


async def produce(
    broker: BrokerSettings, topic: str, records: Sequence[tuple[bytes | None, bytes]]
) -> None:
    """Produce (key, value) records and wait for every ack."""
    async with kafka_producer(broker) as producer:
        futures = [await producer.send(topic, value=v, key=k) for k, v in records]
        await asyncio.wait_for(asyncio.gather(*futures), 30)


async def _partitions(consumer: Any, topic: str) -> set[int]:
    await asyncio.wait_for(consumer.topics(), 20)  # refreshes the cluster metadata
    parts: set[int] | None = consumer.partitions_for_topic(topic)
    return parts or set()


class TopicCollector:
    """Reads every partition of `topic` from the beginning in a background task."""

    def __init__(self, broker: BrokerSettings, topic: str) -> None:
        self.broker = broker
        self.topic = topic
        self.messages: list[Message] = []
        self.undecodable: list[bytes] = []
        self.keys: list[bytes | None] = []
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._consumer: Any = None

    async def __aenter__(self) -> Self:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.broker.bootstrap_servers(),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        self._consumer = consumer
        await asyncio.wait_for(consumer.start(), 20)
        parts = await _partitions(consumer, self.topic)
        tps = [TopicPartition(self.topic, p) for p in sorted(parts or ())]
        assert tps, f"topic {self.topic} has no partitions"
        consumer.assign(tps)
        await asyncio.wait_for(consumer.seek_to_beginning(*tps), 20)
        self._task = asyncio.create_task(self._run(), name=f"collect:{self.topic}")
        return self

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            if not batches:
                continue
            async with self._changed:
                for records in batches.values():
                    for r in records:
                        self.keys.append(r.key)
                        try:
                            self.messages.append(decode(r.value))
                        except SchemaError:
                            self.undecodable.append(r.value)
                self._changed.notify_all()

    async def wait_until(
        self, predicate: Callable[[list[Message]], bool], timeout_s: float, what: str
    ) -> None:
        """Wait until `predicate(self.messages)` holds; AssertionError after `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: predicate(self.messages))
        except TimeoutError:
            raise AssertionError(
                f"{self.topic}: timed out after {timeout_s}s waiting for {what} "
                f"({len(self.messages)} messages so far)"
            ) from None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await asyncio.wait_for(self._consumer.stop(), 20)


async def committed_offsets(broker: BrokerSettings, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of `topic` (partitions without one omitted)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers(), group_id=group, enable_auto_commit=False
    )
    await asyncio.wait_for(consumer.start(), 20)
    try:
        parts = await _partitions(consumer, topic)
        out: dict[int, int] = {}
        for p in sorted(parts or ()):
            off = await asyncio.wait_for(consumer.committed(TopicPartition(topic, p)), 20)
            if off is not None:
                out[p] = off
        return out
    finally:
        await asyncio.wait_for(consumer.stop(), 20)
