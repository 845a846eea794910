"""Thin aiokafka adapters: a producer and a consumer built from `BrokerSettings`.

Everything the services need from Kafka goes through two small protocols, `Producer` and
`Consumer`, so the runtime can run against the in-memory fakes of the unit tests as well as
against these adapters. The adapters own three rules:

- every await on the broker has a timeout (`BrokerSettings.request_timeout_s` based);
- aiokafka's `KafkaError` family is translated in one place, `kafka_errors()`, into ours
  (`raise BrokerUnavailable(...) from exc`), keeping aiokafka's `retriable` flag:
  retriable → `BrokerUnavailable`, timeouts → `BrokerTimeout`, the rest → `BrokerError`
  (a lost group membership on commit → `CommitFailed`);
- consumers never auto-commit (`enable_auto_commit=False`): the runtime commits explicit
  offsets after the effect of a record is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import AsyncIterator, Awaitable, Generator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import (
    CommitFailedError,
    ConsumerStoppedError,
    KafkaError,
    KafkaTimeoutError,
    RequestTimedOutError,
)

from brokers.errors import BrokerError, BrokerTimeout, BrokerUnavailable
from brokers.settings import BrokerSettings
from schemas.limits import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

# Room for the record envelope (key, headers, batch header) above the message cap.
_RECORD_OVERHEAD = 64 * 1024
MAX_RECORD_BYTES = MAX_MESSAGE_BYTES + _RECORD_OVERHEAD


class CommitFailed(BrokerError):
    """The offsets were not committed because the group rebalanced (membership changed).

    Not retriable: the partitions may belong to another member now, which will redo the
    uncommitted records from the last committed offset (at-least-once).
    """


class ConsumerStopped(BrokerError):
    """The consumer was stopped while a call on it was waiting."""


class Partition(NamedTuple):
    """One topic partition."""

    topic: str
    partition: int


class RecordAck(NamedTuple):
    """Where Kafka stored one produced record."""

    topic: str
    partition: int
    offset: int


class ConsumedRecord(NamedTuple):
    """One record read from Kafka (raw bytes; decoding is the runtime's job)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int


class Producer(Protocol):
    """The producer side: enqueue a record, get an awaitable that resolves when it is acked."""

    async def send(self, topic: str, key: bytes | None, value: bytes) -> Awaitable[RecordAck]:
        """Enqueue one record; awaiting the result waits for the broker's ack.

        Raises `BrokerError` (from the enqueue or from the ack) on failure.
        """
        ...


class RebalanceListener(Protocol):
    """Called by the consumer around group rebalances (from the consumer's own task)."""

    async def on_revoked(self, partitions: set[Partition]) -> None:
        """Partitions are about to be taken away: finish and commit their work now."""
        ...

    async def on_assigned(self, partitions: set[Partition]) -> None:
        """Partitions were assigned; consumption resumes from their committed offsets."""
        ...


class Consumer(Protocol):
    """The consumer side the runtime needs: batches of records and explicit commits."""

    async def getmany(self, timeout_s: float, max_records: int) -> list[ConsumedRecord]:
        """The records fetched so far, waiting up to `timeout_s`: each partition's in offset
        order, and the partitions interleaved in production order (`in_production_order`)."""
        ...

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit `offsets` (the next offset to read per partition)."""
        ...


def in_production_order(partitions: Iterable[Sequence[ConsumedRecord]]) -> list[ConsumedRecord]:
    """One fetch's records, per-partition batches merged by timestamp (as far as one fetch
    shows: a record still in the consumer's buffer comes in a later call).

    Each partition's own order is kept (a merge only ever takes a batch's head); across
    partitions the earlier-produced record comes first. Why: aiokafka hands a fetch out
    partition by partition, so a service reading two topics could handle a record before one
    produced well before it on the other topic (the profiler saw a device's next telemetry
    before the acks of its last round, and folded that round as missed).
    """
    return list(heapq.merge(*partitions, key=lambda r: r.timestamp_ms))


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # aiokafka's BrokerResponseError.__str__ needs an errno it may lack
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def translate(exc: BaseException, what: str) -> BrokerError:
    """Our error for an aiokafka (or timeout) error raised while doing `what`."""
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, CommitFailedError):
        return CommitFailed(f"{what}: {_describe(exc)}")
    if isinstance(exc, ConsumerStoppedError):
        return ConsumerStopped(f"{what}: consumer stopped")
    if isinstance(exc, (TimeoutError, KafkaTimeoutError, RequestTimedOutError)):
        return BrokerTimeout(f"{what}: timed out ({type(exc).__name__})")
    if isinstance(exc, KafkaError) and exc.retriable:
        return BrokerUnavailable(f"{what}: {_describe(exc)}")
    return BrokerError(f"{what}: {_describe(exc)}")


@contextlib.asynccontextmanager
async def kafka_errors(what: str, timeout_s: float | None) -> AsyncIterator[None]:
    """Run the body under a timeout, translating aiokafka errors into `BrokerError`s.

    `timeout_s=None` is only for bodies that bound themselves (none in this module).
    """
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except (KafkaError, ConsumerStoppedError, TimeoutError) as exc:
        raise translate(exc, what) from exc


class KafkaProducer:
    """`Producer` over `AIOKafkaProducer`: acks and idempotence from `BrokerSettings`."""

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        client_id: str,
        linger_ms: int = 2,
    ) -> None:
        self._settings = settings
        self._timeout = settings.request_timeout_s
        self._client_id = client_id
        self._linger_ms = linger_ms
        self._producer: Any = None

    async def __aenter__(self) -> Self:
        if self._producer is not None:
            raise RuntimeError("KafkaProducer is not reentrant")
        timeout_ms = int(self._timeout * 1000)
        producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.bootstrap_servers(),
            client_id=self._client_id,
            acks=self._settings.producer_acks(),
            enable_idempotence=self._settings.kafka_idempotent,
            request_timeout_ms=timeout_ms,
            linger_ms=self._linger_ms,
            max_request_size=MAX_RECORD_BYTES,
            **self._settings.kafka_security(),  # SSL / SASL: docs/security.md
        )
        try:
            async with kafka_errors("start producer", 2 * self._timeout):
                await producer.start()
        except BaseException:
            await _stop_quietly(producer, self._timeout, "producer")
            raise
        self._producer = producer
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            # stop() flushes what is still queued; bounded like every other call.
            await _stop_quietly(producer, 2 * self._timeout, "producer")

    async def send(self, topic: str, key: bytes | None, value: bytes) -> Awaitable[RecordAck]:
        """Enqueue one record (bounded wait for metadata / buffer space); see `Producer`."""
        if self._producer is None:
            raise BrokerError("send: producer is not started")
        async with kafka_errors(f"send to {topic}", self._timeout):
            future = await self._producer.send(topic, value=value, key=key)
        # aiokafka bounds delivery by request_timeout_ms itself; the extra second is ours.
        return _PendingAck(future, topic, self._timeout + 1.0)


class _PendingAck:
    """The ack of one enqueued record; a plain awaitable, so dropping it unawaited is safe."""

    __slots__ = ("_future", "_timeout", "_topic")

    def __init__(self, future: Any, topic: str, timeout_s: float) -> None:
        self._future = future
        self._topic = topic
        self._timeout = timeout_s

    def __await__(self) -> Generator[Any, None, RecordAck]:
        return self._wait().__await__()

    async def _wait(self) -> RecordAck:
        async with kafka_errors(f"ack from {self._topic}", self._timeout):
            # shield: a timeout here must not cancel aiokafka's own delivery future.
            meta = await asyncio.shield(self._future)
        return RecordAck(meta.topic, meta.partition, meta.offset)


class _ListenerAdapter(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's listener interface calling our `RebalanceListener`."""

    def __init__(self, listener: RebalanceListener) -> None:
        self._listener = listener

    async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        await self._listener.on_revoked({Partition(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        await self._listener.on_assigned({Partition(tp.topic, tp.partition) for tp in assigned})


class KafkaConsumer:
    """`Consumer` over `AIOKafkaConsumer` in a consumer group, with manual commits only."""

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        topics: Sequence[str],
        group_id: str,
        client_id: str,
        listener: RebalanceListener,
        auto_offset_reset: str = "earliest",
        session_timeout_s: float = 10.0,
        max_poll_interval_s: float = 300.0,
    ) -> None:
        self._settings = settings
        self._timeout = settings.request_timeout_s
        self._topics = list(topics)
        self._group_id = group_id
        self._client_id = client_id
        self._listener = listener
        self._auto_offset_reset = auto_offset_reset
        self._session_timeout_ms = int(session_timeout_s * 1000)
        self._max_poll_interval_ms = int(max_poll_interval_s * 1000)
        self._consumer: Any = None

    async def __aenter__(self) -> Self:
        if self._consumer is not None:
            raise RuntimeError("KafkaConsumer is not reentrant")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.bootstrap_servers(),
            client_id=self._client_id,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset=self._auto_offset_reset,
            request_timeout_ms=int(self._timeout * 1000),
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=max(100, self._session_timeout_ms // 3),
            max_poll_interval_ms=self._max_poll_interval_ms,
            max_partition_fetch_bytes=MAX_RECORD_BYTES,
            fetch_max_bytes=4 * MAX_RECORD_BYTES,
            **self._settings.kafka_security(),
        )
        try:
            async with kafka_errors("start consumer", 2 * self._timeout):
                await consumer.start()
                consumer.subscribe(topics=self._topics, listener=_ListenerAdapter(self._listener))
        except BaseException:
            await _stop_quietly(consumer, self._timeout, "consumer")
            raise
        self._consumer = consumer
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            # stop() leaves the group, so the partitions move on without a session timeout.
            await _stop_quietly(consumer, 2 * self._timeout, "consumer")

    async def getmany(self, timeout_s: float, max_records: int) -> list[ConsumedRecord]:
        """See `Consumer.getmany`; raises `ConsumerStopped` once stopped."""
        if self._consumer is None:
            raise ConsumerStopped("getmany: consumer is not started")
        async with kafka_errors("fetch", timeout_s + self._timeout):
            batches = await self._consumer.getmany(
                timeout_ms=int(timeout_s * 1000), max_records=max_records
            )
        return in_production_order(
            [
                ConsumedRecord(
                    r.topic, r.partition, r.offset, r.key, r.value or b"", r.timestamp or 0
                )
                for r in records
            ]
            for records in batches.values()
        )

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        """See `Consumer.commit`; `CommitFailed` when the group rebalanced meanwhile."""
        if self._consumer is None:
            raise ConsumerStopped("commit: consumer is not started")
        if not offsets:
            return
        tps = {TopicPartition(p.topic, p.partition): off for p, off in offsets.items()}
        # A partition that moved to another member meanwhile cannot be committed by us
        # (aiokafka raises IllegalStateError); its new owner redoes those records.
        assigned = self._consumer.assignment()
        lost = sorted(tp for tp in tps if tp not in assigned)
        kept = {tp: off for tp, off in tps.items() if tp in assigned}
        if kept:
            # aiokafka retries retriable commit errors forever; the timeout bounds that.
            async with kafka_errors("commit", 2 * self._timeout):
                await self._consumer.commit(kept)
        if lost:
            raise CommitFailed(f"commit: partitions no longer assigned: {lost}")


async def _stop_quietly(client: Any, timeout_s: float, what: str) -> None:
    """Stop an aiokafka client within `timeout_s`; a failure to stop is logged, not raised."""
    try:
        async with asyncio.timeout(timeout_s):
            await client.stop()
    except (KafkaError, TimeoutError, OSError) as exc:
        log.warning("stopping the Kafka %s failed: %s: %s", what, type(exc).__name__, exc)
