"""`Recorder`: taps a running deployment (MQTT topics, Kafka topics) into a recording.

MQTT: one plain (non-shared) subscription per recorded topic kind, `{root}/+/<kind>` for device
topics and `{root}/round`, `{root}/model/+`, `{root}/gate/+`, with QoS 1, a clean session and
automatic PUBACK (the recorder observes; it is no consumer of record). Kafka: a consumer in a
group of its own that never commits, from now (or from the beginning). Each message is stamped
with `time.time_ns()` on arrival and appended to the `RecordingWriter`; a row group is written
when the buffer is full or every `flush_s`. The recorder stops on `stop()` (SIGINT/SIGTERM in
the command) or after `duration_s`, writes the last group and the footer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

import aiomqtt

from brokers.kafka import KafkaConsumer, Partition
from brokers.mqtt import mqtt_client, translate
from brokers.settings import BrokerSettings
from recording.format import KAFKA, MQTT, Record
from recording.settings import RecordSettings, split
from recording.writer import RecordingWriter
from schemas.topics import MqttTopic, Topic, TopicTable

log = logging.getLogger(__name__)

_KIND_TOPICS = {
    "telemetry": MqttTopic.TELEMETRY,
    "status": MqttTopic.STATUS,
    "update": MqttTopic.UPDATE,
    "assignment": MqttTopic.ASSIGNMENT,
    "ack": MqttTopic.ACK,
    "round": MqttTopic.ROUND,
    "model": MqttTopic.MODEL,
    "gate": MqttTopic.GATE,
}


def mqtt_filters(table: TopicTable, kinds: tuple[str, ...]) -> list[str]:
    """The MQTT filters of the recorded topic kinds."""
    return [table.mqtt(_KIND_TOPICS[k]) for k in kinds]


def kafka_names(table: TopicTable, topics: tuple[str, ...]) -> list[str]:
    """Concrete Kafka names: a logical name (`rounds`) in the namespace, others as given."""
    logical = {t.value for t in Topic}
    return [table.name(Topic(t)) if t in logical else t for t in topics]


class _Assigned:
    """Rebalance listener that only notes the first assignment (a tap commits nothing)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def on_revoked(self, partitions: set[Partition]) -> None:
        return None

    async def on_assigned(self, partitions: set[Partition]) -> None:
        self.event.set()


class Recorder:
    """Taps `broker` into `writer` (see the module docstring)."""

    def __init__(
        self,
        broker: BrokerSettings,
        settings: RecordSettings,
        writer: RecordingWriter,
        *,
        progress: TextIO | None = sys.stderr,
    ) -> None:
        self.broker = broker
        self.settings = settings
        self.writer = writer
        self.table = broker.topic_table()
        self.records = 0
        self.bytes = 0
        self.by_source = {MQTT: 0, KAFKA: 0}
        self._progress = progress
        self.appended = asyncio.Event()  # set at every record (tests and progress wait on it)
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._started = time.monotonic()

    def stop(self) -> None:
        """Stop recording (safe to call more than once, from a signal handler's callback)."""
        self._stop.set()

    async def wait_records(self, n: int) -> None:
        """Wait until at least `n` records were appended (the caller bounds the wait)."""
        while self.records < n:
            self.appended.clear()
            await self.appended.wait()

    async def ready(self) -> None:
        """Wait until every tap subscribed."""
        await self._ready.wait()

    def _append(self, record: Record) -> None:
        self.writer.append(record)
        self.records += 1
        self.bytes += len(record.payload)
        self.by_source[record.source] += 1
        self.appended.set()

    async def run(self) -> dict[str, Any]:
        """Record until `stop()` or the duration; returns the totals."""
        self._started = time.monotonic()
        taps: list[asyncio.Task[None]] = []
        kinds = split(self.settings.mqtt)
        topics = split(self.settings.kafka)
        ready = [asyncio.Event() for _ in range(bool(kinds) + bool(topics))]
        try:
            async with asyncio.TaskGroup() as group:
                if kinds:
                    taps.append(group.create_task(self._mqtt(kinds, ready[0]), name="rec:mqtt"))
                if topics:
                    taps.append(group.create_task(self._kafka(topics, ready[-1]), name="rec:kafka"))
                taps.append(group.create_task(self._flusher(), name="rec:flush"))
                for event in ready:
                    await event.wait()
                self._ready.set()
                duration = self.settings.duration_s or None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(duration):
                        await self._stop.wait()
                for task in taps:
                    task.cancel()
        finally:
            self.writer.close()
            self._line(final=True)
        return self.totals()

    def totals(self) -> dict[str, Any]:
        """Counters so far."""
        elapsed = time.monotonic() - self._started
        return {
            "records": self.records,
            "payload_bytes": self.bytes,
            "mqtt": self.by_source[MQTT],
            "kafka": self.by_source[KAFKA],
            "row_groups": self.writer.groups,
            "elapsed_s": round(elapsed, 3),
            "rate_per_s": round(self.records / elapsed, 1) if elapsed > 0 else 0.0,
        }

    def _line(self, *, final: bool = False) -> None:
        if self._progress is None:
            return
        t = self.totals()
        print(
            f"record: {t['records']} records ({t['mqtt']} mqtt, {t['kafka']} kafka), "
            f"{t['payload_bytes'] / 1e6:.2f} MB, {t['rate_per_s']:.0f} rec/s, "
            f"{t['row_groups']} row groups{' (done)' if final else ''}",
            file=self._progress,
            flush=True,
        )

    async def _flusher(self) -> None:
        last_line = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.flush_s)
            self.writer.flush()
            every = self.settings.progress_s
            if every and time.monotonic() - last_line >= every:
                self._line()
                last_line = time.monotonic()

    async def _mqtt(self, kinds: tuple[str, ...], ready: asyncio.Event) -> None:
        client = mqtt_client(
            self.broker,
            client_id=f"{self.settings.client_id}-{uuid.uuid4().hex[:6]}",
            persistent=False,
        )
        timeout = self.broker.request_timeout_s
        try:
            async with asyncio.timeout(timeout + 1.0):
                await client.__aenter__()
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            raise translate(exc, f"recorder connect to {self.broker.mqtt_url}") from exc
        try:
            for topic_filter in mqtt_filters(self.table, kinds):
                await client.subscribe(topic_filter, qos=1, timeout=timeout)
            ready.set()
            async for message in client.messages:
                payload = message.payload
                data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
                self._append(
                    Record.observed(
                        time.time_ns(),
                        MQTT,
                        message.topic.value,
                        data,
                        qos=message.qos,
                        retain=bool(message.retain),
                    )
                )
        except aiomqtt.MqttError as exc:
            raise translate(exc, "recorder receive") from exc
        finally:
            with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                async with asyncio.timeout(timeout + 1.0):
                    await client.__aexit__(None, None, None)

    async def _kafka(self, topics: tuple[str, ...], ready: asyncio.Event) -> None:
        listener = _Assigned()
        consumer = KafkaConsumer(
            self.broker,
            topics=kafka_names(self.table, topics),
            group_id=f"{self.settings.client_id}-{uuid.uuid4().hex}",
            client_id=self.settings.client_id,
            listener=listener,
            auto_offset_reset="earliest" if self.settings.kafka_from_beginning else "latest",
        )
        async with consumer:
            while True:
                batch = await consumer.getmany(timeout_s=0.5, max_records=2000)
                if listener.event.is_set():
                    ready.set()  # from "latest", only what is produced after the assignment
                for r in batch:
                    self._append(
                        Record.observed(
                            time.time_ns(),
                            KAFKA,
                            r.topic,
                            r.value,
                            key=r.key,
                            partition=r.partition,
                            offset=r.offset,
                        )
                    )


async def record(
    broker: BrokerSettings,
    settings: RecordSettings,
    path: Path,
    *,
    info: dict[str, Any],
    progress: TextIO | None = sys.stderr,
) -> dict[str, Any]:
    """Record into `path` until SIGINT/SIGTERM or the duration; the totals."""
    from fedmoe.signals import stop_on_signals

    writer = RecordingWriter(
        path,
        info=info,
        max_group_records=settings.group_records,
        max_group_bytes=int(settings.group_mb * 1024 * 1024),
    )
    with writer:
        recorder = Recorder(broker, settings, writer, progress=progress)
        with stop_on_signals(recorder.stop):
            return await recorder.run()
