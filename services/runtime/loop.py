"""The one consume→handle→produce loop (cf. faststream's `_run_consume_loop`).

    poll a batch ─► per record: decode ─► handle ─► encode outputs ─► enqueue on the producer
                                 │          │
                                 │          ├─ InvalidPayload / non-retriable → DeadLetter
                                 │          ├─ retriable error → capped backoff, same record
                                 │          └─ unexpected exception → logged, DeadLetter
                                 └─ SchemaError → DeadLetter
    ─► await every ack ─► handler.checkpoint() ─► commit the batch's offsets

Guarantees (at-least-once, never lost):

- offsets are committed only after every output of the records they cover (dead letters
  included) was acknowledged by Kafka and the handler's checkpoint (if any) returned;
- the batch runs under a lock that the rebalance listener also takes: on revoke the loop stops
  taking new records of the batch, finishes and commits the ones it started, and only then
  lets the rebalance go on; records handed out before a revoke and not yet started are dropped
  (aiokafka gives every newly assigned partition a fresh position from its committed offset,
  so they are fetched again), while records handed out after it belong to the new assignment
  and are handled;
- `stop()` lets the current record finish, delivers and commits what was handled, and ends the
  loop; retries and backoffs are interrupted by it (those inputs are redone after a restart);
- ticks run in the same task as `handle`, so a handler never sees two calls at once;
- a handler that is a `PartitionListener` hears of every revoke (after the batch in hand was
  committed, or the wait for it gave up) and every assignment, under the same lock;
- a message that came as chunks (`schemas.chunks`) reaches the handler once, whole, as the
  record of its last chunk; until then a partition's offsets are committed no further than the
  first chunk of any whole still incomplete on it, so a restart reads those chunks again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from brokers.errors import BrokerError
from brokers.kafka import CommitFailed, ConsumedRecord, Consumer, ConsumerStopped, Partition
from brokers.kafka import Producer as KafkaProducerProtocol
from fedmoe.errors import FedMoEError
from schemas import decode
from schemas.chunks import Reassembler
from schemas.errors import SchemaError
from schemas.messages import Message, MessageChunk
from schemas.topics import Topic, TopicTable
from services.deadletter import dead_letter
from services.errors import InvalidPayload, ServiceFailed
from services.handler import (
    Checkpointer,
    Handler,
    InboundRecord,
    Outbound,
    PartitionListener,
    Ticker,
)
from services.metrics import Latency, Outcome, ServiceMetrics
from services.runtime.delivery import Backoff, Delivery, EncodedRecord, encode_outbound
from services.runtime.lag import highwaters
from services.runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)

_COMMIT_ATTEMPTS = 5


class ConsumeLoop:
    """The loop over one `Consumer` and one `Producer`; also the group's rebalance listener.

    Build it, pass it as the `RebalanceListener` of the consumer, then `await run(consumer)`.
    """

    def __init__(
        self,
        *,
        name: str,
        handler: Handler,
        producer: KafkaProducerProtocol,
        table: TopicTable,
        settings: RuntimeSettings,
        metrics: ServiceMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._handler = handler
        self._producer = producer
        self._table = table
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._backoff = Backoff(settings.retry_initial_s, settings.retry_max_s)
        self._ticker = handler if isinstance(handler, Ticker) else None
        self._checkpointer = handler if isinstance(handler, Checkpointer) else None
        self._partitions = handler if isinstance(handler, PartitionListener) else None
        self._dead_letter_topic = table.name(Topic.DEAD_LETTER)
        # Held while a batch (or a tick) is worked on; the rebalance listener takes it too.
        self._lock = asyncio.Lock()
        # Set by stop() and by a pending revoke: stop taking records, cut retries short.
        self._interrupt = asyncio.Event()
        self._stopping = asyncio.Event()
        self._generation = 0  # bumped on every revoke: fetched-before records are stale
        self._revokes_waiting = 0  # revokes waiting for the batch in hand
        self._assigned: set[Partition] = set()
        self._next: dict[tuple[str, int], int] = {}  # next offset to read, per partition
        # Outputs of handled work (a record or a tick) whose delivery was interrupted: the
        # handler's state already holds that work, so they go out before anything else and
        # nothing is checkpointed or committed while they wait (else a restart would take the
        # redelivered record for a duplicate and the outputs would never be produced).
        self._unsent: list[EncodedRecord] = []
        self._chunks = Reassembler(ordered=True)  # a partition delivers a whole's chunks in order
        # A whole reassembled from chunks whose handling was interrupted: its partition and
        # first chunk's offset, which the batch's commit must not pass.
        self._interrupted_whole: tuple[Partition, int] | None = None

    # -- control -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the record in hand, deliver and commit, then end `run()`."""
        self._stopping.set()
        self._interrupt.set()

    @property
    def stopping(self) -> bool:
        """True once `stop()` was called."""
        return self._stopping.is_set()

    @property
    def assigned(self) -> frozenset[Partition]:
        """Partitions this member owns now."""
        return frozenset(self._assigned)

    # -- RebalanceListener -------------------------------------------------------------------

    async def on_revoked(self, partitions: set[Partition]) -> None:
        """Wait (bounded) for the batch in hand to be delivered and committed."""
        if not partitions:
            return
        self._metrics.inc(Outcome.REBALANCES)
        self._interrupt.set()
        self._revokes_waiting += 1
        acquired = False
        try:
            async with asyncio.timeout(self._settings.rebalance_timeout_s):
                await self._lock.acquire()
            acquired = True
        except TimeoutError:
            log.warning(
                "%s: in-flight work did not finish within %.1fs of a revoke; it will be "
                "redone by the next owner",
                self.name,
                self._settings.rebalance_timeout_s,
            )
        finally:
            self._revokes_waiting -= 1
            self._generation += 1
            self._assigned -= partitions
            for p in partitions:
                self._chunks.forget((p.topic, p.partition))
            try:
                if self._partitions is not None:
                    await self._tell(self._partitions.on_partitions_revoked, partitions)
            finally:
                if acquired:
                    self._lock.release()
        log.info("%s: revoked %s", self.name, sorted(partitions))

    async def on_assigned(self, partitions: set[Partition]) -> None:
        """Record the new assignment (positions come from the committed offsets)."""
        self._assigned |= partitions
        log.info("%s: assigned %s", self.name, sorted(partitions))
        if self._partitions is None or not partitions:
            return
        acquired = False
        try:
            async with asyncio.timeout(self._settings.rebalance_timeout_s):
                await self._lock.acquire()
            acquired = True
        except TimeoutError:
            # Whatever holds the lock works on other partitions: the new ones are not yet ours
            # to have been handled, so telling the handler now cannot clash with it.
            log.warning("%s: batch lock busy; telling the handler of the assignment", self.name)
        try:
            await self._tell(self._partitions.on_partitions_assigned, partitions)
        finally:
            if acquired:
                self._lock.release()

    async def _tell(
        self,
        hook: Callable[[frozenset[tuple[str, int]]], Awaitable[None]],
        partitions: set[Partition],
    ) -> None:
        """Call a rebalance hook of the handler; its failure must not break the rebalance."""
        try:
            await hook(frozenset(partitions))
        except Exception:
            self._metrics.inc(Outcome.HANDLER_ERRORS)
            log.exception("%s: %s raised", self.name, getattr(hook, "__name__", "hook"))

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, consumer: Consumer) -> None:
        """Poll, handle, deliver, commit until `stop()`; raise on fatal errors."""
        try:
            await self._run(consumer)
        finally:
            self._chunks.close()  # incomplete wholes are read again after a restart

    async def _run(self, consumer: Consumer) -> None:
        next_tick = self._clock() + self._settings.tick_interval_s
        poll_failures = 0
        while not self._stopping.is_set():
            try:
                records, generation = await self._poll(consumer)
            except ConsumerStopped:
                break
            except BrokerError as exc:
                if not exc.retriable:
                    raise
                poll_failures += 1
                self._metrics.inc(Outcome.RETRIED)
                # aiokafka's getmany also waits out a group rebalance, which may take up to the
                # session timeout; the adapter's timeout turns a long one into this retry.
                log.warning("%s: poll failed (try %d): %s", self.name, poll_failures, exc)
                await self._backoff.sleep(poll_failures, self._stopping)
                continue
            poll_failures = 0
            self._metrics.polls += 1
            self._note_lags(consumer, records)
            async with self._lock:
                if not self._stopping.is_set() and self._revokes_waiting == 0:
                    self._interrupt.clear()  # a revoke that interrupted the last batch is over
                if records and generation != self._generation:
                    # A revoke ran between the fetch and now: the new assignment starts from
                    # the committed offsets, so these records will be fetched again.
                    self._metrics.inc(Outcome.DROPPED_STALE, len(records))
                    records = []
                if records:
                    await self.process_batch(records, consumer)
                if self._ticker is not None and self._clock() >= next_tick:
                    await self._tick(self._ticker)
                    next_tick = self._clock() + self._settings.tick_interval_s

    def _note_lags(self, consumer: Consumer, records: Sequence[ConsumedRecord]) -> None:
        """Lag per owned partition: its end (as the last fetch saw it) minus the next offset
        to read (the last record fetched + 1; before any record, the end counts as read)."""
        for record in records:
            self._next[(record.topic, record.partition)] = record.offset + 1
        ends = highwaters(consumer, self._assigned)
        owned = {(p.topic, p.partition) for p in self._assigned}
        self._metrics.forget_lags(owned)
        for key in owned:
            end = ends.get(key)
            if end is not None:
                self._metrics.set_lag(*key, end - self._next.get(key, end))

    async def _poll(self, consumer: Consumer) -> tuple[list[ConsumedRecord], int]:
        """One `getmany`, and the revoke generation at the moment it returned.

        aiokafka's getmany waits out a rebalance and then returns records of the *new*
        assignment, whose positions have moved past them: those must be handled, not
        dropped. So staleness is judged against the generation read right when the records
        were handed out (in the fetching task, with no await in between), not before the
        call. A poll still waiting when `stop()` comes is abandoned: it handed out nothing.
        """

        async def fetch() -> tuple[list[ConsumedRecord], int]:
            records = await consumer.getmany(
                self._settings.poll_timeout_s, self._settings.max_batch
            )
            return records, self._generation

        fetching = asyncio.ensure_future(fetch())
        stopped = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({fetching, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not fetching.done():
                fetching.cancel()
        await asyncio.wait({fetching})  # let a cancelled fetch unwind (it never raises here)
        if fetching.cancelled():
            return [], self._generation
        return fetching.result()

    async def process_batch(self, records: Sequence[ConsumedRecord], consumer: Consumer) -> None:
        """Handle `records` in order, deliver all outputs, checkpoint, commit.

        Stops taking records when interrupted (stop or revoke): what was started is still
        delivered and committed; the rest is left uncommitted and is redone later.
        """
        self._metrics.inc(Outcome.RECEIVED, len(records))
        if not await self._flush_unsent():
            return  # the records stay uncommitted and are redone
        delivery = self._delivery()
        done: dict[Partition, int] = {}
        # On every batch: a whole whose sender died must stop holding commits back.
        sent: list[EncodedRecord] = self._expire_chunks()
        if sent and not await delivery.send(sent):
            self._unsent = sent
            return
        for record in records:
            if self._interrupt.is_set():
                break
            outputs = await self._handle_record(record)
            if outputs is None:
                if self._interrupted_whole is not None:
                    partition, first = self._interrupted_whole
                    done[partition] = min(done.get(partition, first), first)
                break
            sent += outputs
            if not await delivery.send(outputs):
                # Handled, but its outputs are not all out: keep the batch's outputs for the
                # next round of work and commit nothing of it (redone records dedup).
                self._unsent = sent
                log.warning("%s: delivery interrupted mid-batch; outputs kept", self.name)
                return
            done[Partition(record.topic, record.partition)] = record.offset + 1
        for partition in done:
            floor = self._chunks.floor((partition.topic, partition.partition))
            if floor is not None:
                done[partition] = min(done[partition], floor)
        if not done:
            return
        if not await delivery.confirm():
            self._unsent = sent
            log.warning("%s: delivery interrupted; %d records not committed", self.name, len(done))
            return
        if not await self._checkpoint():
            return
        await self._commit(consumer, done)

    # -- steps -------------------------------------------------------------------------------

    def _delivery(self) -> Delivery:
        return Delivery(self._producer, self._metrics, self._backoff, self._interrupt)

    async def _handle_record(self, record: ConsumedRecord) -> list[EncodedRecord] | None:
        """The encoded outputs of one record (its dead letter when rejected); None to stop."""
        raw = record.value
        try:
            message = decode(raw)
            self._interrupted_whole = None
            if isinstance(message, MessageChunk):
                strays = self._chunks.strays
                assembled = self._chunks.add(
                    message,
                    self._clock(),
                    source=(record.topic, record.partition),
                    offset=record.offset,
                )
                if assembled is None:
                    stray = self._chunks.strays > strays
                    self._metrics.inc(Outcome.CHUNKS_STRAY if stray else Outcome.CHUNKS_HELD)
                    return []
                message, raw = assembled.message, assembled.data
                where = Partition(record.topic, record.partition)
                self._interrupted_whole = (where, assembled.first_offset)
        except SchemaError as exc:
            return [self._dead_letter(record, None, str(exc), type(exc).__name__)]
        inbound = InboundRecord(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            message=message,
            raw=raw,
            timestamp_ms=record.timestamp_ms,
        )
        attempt = 0
        while True:
            try:
                outputs = await self._handler.handle(inbound)
                encoded = [rec for out in outputs for rec in encode_outbound(out, self._table)]
                self._metrics.outputs(outputs)
            except InvalidPayload as exc:
                return [self._dead_letter(record, message, str(exc), type(exc).__name__)]
            except FedMoEError as exc:
                if not exc.retriable:
                    return [self._dead_letter(record, message, str(exc), type(exc).__name__)]
                attempt += 1
                self._metrics.inc(Outcome.RETRIED)
                log.warning(
                    "%s: %s/%d@%d failed (try %d), will retry: %s",
                    self.name,
                    record.topic,
                    record.partition,
                    record.offset,
                    attempt,
                    exc,
                )
                if not await self._backoff.sleep(attempt, self._interrupt):
                    return None
                continue
            except Exception as exc:
                # A handler bug must not wedge the partition: keep the input, go on.
                self._metrics.inc(Outcome.HANDLER_ERRORS)
                log.exception(
                    "%s: handler raised on %s/%d@%d; dead-lettering it",
                    self.name,
                    record.topic,
                    record.partition,
                    record.offset,
                )
                reason = f"handler error: {type(exc).__name__}: {exc}"
                return [self._dead_letter(record, message, reason, type(exc).__name__)]
            self._metrics.inc(Outcome.HANDLED)
            return encoded

    def _expire_chunks(self) -> list[EncodedRecord]:
        """Give up the incomplete wholes too old to complete: one dead letter each."""
        letters = []
        for dropped in self._chunks.expire(self._clock()):
            self._metrics.inc(Outcome.CHUNKS_EXPIRED)
            self._metrics.dead_letter("IncompleteMessage")
            reason = f"{dropped.received} of {dropped.count} chunks came before it was given up"
            log.warning(
                "%s: gave up %r of %r: %s", self.name, dropped.whole_id, dropped.device_id, reason
            )
            topic, partition = dropped.source if isinstance(dropped.source, tuple) else ("", 0)
            letter = dead_letter(
                source=str(topic),
                reason=reason,
                error="IncompleteMessage",
                original=b"",
                message_id=f"{topic}/{partition}/incomplete/{dropped.whole_id}",
                device_id=dropped.device_id,
                service=self.name,
                now=self._clock(),
            )
            letters += encode_outbound(
                Outbound(self._dead_letter_topic, str(topic), letter), self._table
            )
        return letters

    def _dead_letter(
        self, record: ConsumedRecord, message: Message | None, reason: str, error: str
    ) -> EncodedRecord:
        self._metrics.dead_letter(error)
        log.warning(
            "%s: dead letter from %s/%d@%d: %s (%s)",
            self.name,
            record.topic,
            record.partition,
            record.offset,
            reason,
            error,
        )
        letter = dead_letter(
            source=record.topic,
            reason=reason,
            error=error,
            original=record.value,
            message_id=f"{record.topic}/{record.partition}/{record.offset}",
            device_id=message.device_id if message is not None else None,
            service=self.name,
            round_=message.round if message is not None else 0,
            now=self._clock(),
        )
        (encoded,) = encode_outbound(
            Outbound(self._dead_letter_topic, record.topic, letter), self._table
        )
        return encoded

    async def _tick(self, ticker: Ticker) -> None:
        self._metrics.inc(Outcome.TICKS)
        if not await self._flush_unsent():
            return  # no new state while earlier outputs are still out
        try:
            outputs: Sequence[Outbound] = await ticker.on_tick(self._clock())
            encoded = [rec for out in outputs for rec in encode_outbound(out, self._table)]
            self._metrics.outputs(outputs)
        except Exception:
            # The next tick tries again; a tick has no input to dead-letter.
            self._metrics.inc(Outcome.TICK_ERRORS)
            log.exception("%s: on_tick raised", self.name)
            return
        if not encoded:
            return
        delivery = self._delivery()
        if await delivery.send(encoded) and await delivery.confirm():
            await self._checkpoint()
        else:
            self._unsent += encoded
            log.warning("%s: tick outputs interrupted before their acks; kept", self.name)

    async def _flush_unsent(self) -> bool:
        """Deliver the kept outputs of interrupted work; False while some are still out."""
        if not self._unsent:
            return True
        delivery = self._delivery()
        if await delivery.send(self._unsent) and await delivery.confirm():
            log.info("%s: delivered %d kept outputs", self.name, len(self._unsent))
            self._unsent = []
            return True
        return False

    async def _checkpoint(self) -> bool:
        """Run the handler's checkpoint; retriable errors are retried. False: interrupted."""
        if self._unsent:
            return False  # the state holds work whose outputs are not out yet
        if self._checkpointer is None:
            return True
        attempt = 0
        while True:
            try:
                await self._checkpointer.checkpoint()
            except FedMoEError as exc:
                if not exc.retriable:
                    raise ServiceFailed(f"checkpoint failed: {exc}") from exc
                attempt += 1
                self._metrics.inc(Outcome.RETRIED)
                log.warning("%s: checkpoint failed (try %d): %s", self.name, attempt, exc)
                if not await self._backoff.sleep(attempt, self._interrupt):
                    return False
                continue
            return True

    async def _commit(self, consumer: Consumer, offsets: dict[Partition, int]) -> None:
        """Commit, retrying retriable failures a few times (bounded by the broker timeouts).

        Not interrupted by stop or revoke: committing finished work is what both want. When
        it finally fails the records are redone later (duplicates, never losses).
        """
        never = asyncio.Event()
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await consumer.commit(offsets)
            except CommitFailed as exc:
                # The group moved on; the new owner redoes these records (duplicates only).
                self._metrics.inc(Outcome.COMMIT_FAILED)
                log.warning("%s: commit lost to a rebalance: %s", self.name, exc)
                return
            except ConsumerStopped:
                self._metrics.inc(Outcome.COMMIT_FAILED)
                return
            except BrokerError as exc:
                if not exc.retriable:
                    raise ServiceFailed(f"commit failed for good: {exc}") from exc
                attempt += 1
                if attempt > _COMMIT_ATTEMPTS:
                    self._metrics.inc(Outcome.COMMIT_FAILED)
                    log.warning("%s: giving up on this commit: %s", self.name, exc)
                    return
                self._metrics.inc(Outcome.RETRIED)
                log.warning("%s: commit failed (try %d): %s", self.name, attempt, exc)
                await self._backoff.sleep(attempt, never)
                continue
            self._metrics.inc(Outcome.COMMITTED)
            self._metrics.observe(Latency.COMMIT, time.monotonic() - started)
            return
