"""Getting records into Kafka for sure: encode outputs, enqueue them, await every ack.

A `Delivery` collects the records of one unit of work (a batch of inputs, one MQTT message),
enqueues each on the `Producer` at once (aiokafka batches them) and `confirm()` waits for all
acks. A retriable failure (enqueue or ack) re-sends that record after a capped backoff, counted
as `retried`; a non-retriable one is fatal (`ServiceFailed`): our own outputs are bounded by the
message cap, so a broker that refuses one for good is misconfigured, and failing loudly beats
committing past the loss. Any wait can be interrupted (stop, revoke): the caller then does not
commit, and the inputs are redone later (at-least-once).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

from brokers.errors import BrokerError
from brokers.kafka import Producer, RecordAck
from schemas.chunks import encode_records
from schemas.topics import Topic, TopicTable
from services.errors import ServiceFailed
from services.handler import Outbound
from services.metrics import Latency, Outcome, ServiceMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: `initial · 2^(attempt-1)`, at most `max_s`."""

    initial_s: float
    max_s: float
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        base = min(self.max_s, self.initial_s * 2.0 ** min(max(attempt - 1, 0), 30))
        return base * (1.0 - self.jitter * random.random())

    async def sleep(self, attempt: int, interrupt: asyncio.Event) -> bool:
        """Wait before retry `attempt`; False when `interrupt` was set first (give up)."""
        if interrupt.is_set():
            return False
        try:
            async with asyncio.timeout(self.delay(attempt)):
                await interrupt.wait()
        except TimeoutError:
            return True
        return False


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """One record ready for the producer."""

    topic: str
    key: bytes | None
    value: bytes


def _key_bytes(key: str | bytes | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return key.encode("utf-8")


def encode_outbound(out: Outbound, table: TopicTable) -> list[EncodedRecord]:
    """Resolve the topic, encode the message and the key: one record, or the chunks of a
    message larger than one record (`schemas.chunks`), all under the same key so they land
    on one partition in order. Raises `schemas.SchemaError`."""
    topic = table.name(out.topic) if isinstance(out.topic, Topic) else out.topic
    key = _key_bytes(out.key)
    text_key = out.key if isinstance(out.key, str) else ""
    return [EncodedRecord(topic, key, value) for value in encode_records(out.message, key=text_key)]


class Delivery:
    """The records of one unit of work, sent at once and confirmed together."""

    def __init__(
        self,
        producer: Producer,
        metrics: ServiceMetrics,
        backoff: Backoff,
        interrupt: asyncio.Event,
    ) -> None:
        self._producer = producer
        self._metrics = metrics
        self._backoff = backoff
        self._interrupt = interrupt
        self._pending: list[tuple[EncodedRecord, Awaitable[RecordAck], float]] = []

    def __len__(self) -> int:
        return len(self._pending)

    async def send(self, records: Sequence[EncodedRecord]) -> bool:
        """Enqueue `records`; False when interrupted while retrying an enqueue."""
        for record in records:
            ack = await self._enqueue(record)
            if ack is None:
                return False
            self._pending.append((record, ack, time.monotonic()))
        return True

    async def confirm(self) -> bool:
        """Wait for every ack (re-sending on retriable failures); False when interrupted."""
        pending, self._pending = self._pending, []
        for record, first, enqueued in pending:
            ack: Awaitable[RecordAck] | None = first
            attempt = 0
            while True:
                if ack is None:
                    return False
                try:
                    await ack
                except BrokerError as exc:
                    if not exc.retriable:
                        raise ServiceFailed(f"Kafka refused a record for good: {exc}") from exc
                    attempt += 1
                    self._metrics.inc(Outcome.RETRIED)
                    log.warning("no ack from %s (try %d): %s", record.topic, attempt, exc)
                    if not await self._backoff.sleep(attempt, self._interrupt):
                        return False
                    ack = await self._enqueue(record)
                    continue
                self._metrics.inc(Outcome.PRODUCED)
                self._metrics.observe(Latency.PRODUCE, time.monotonic() - enqueued)
                break
        return True

    async def _enqueue(self, record: EncodedRecord) -> Awaitable[RecordAck] | None:
        attempt = 0
        while True:
            try:
                return await self._producer.send(record.topic, record.key, record.value)
            except BrokerError as exc:
                if not exc.retriable:
                    raise ServiceFailed(f"Kafka refused a record for good: {exc}") from exc
                attempt += 1
                self._metrics.inc(Outcome.RETRIED)
                log.warning("cannot enqueue to %s (try %d): %s", record.topic, attempt, exc)
                if not await self._backoff.sleep(attempt, self._interrupt):
                    return None
