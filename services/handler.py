"""What a service handler sees and returns (pure types: no broker imports).

A handler is any object with `async handle(record) -> Sequence[Outbound]`. Three optional
capabilities are detected by the runtime at start:

- `async on_tick(now) -> Sequence[Outbound]`: called every `tick_interval_s` from the same task
  as `handle` (never concurrently with it), for deadlines such as a round's;
- `async checkpoint() -> None`: called after the outputs of a batch were acknowledged by Kafka
  and before its offsets are committed, for services whose effect is state (the aggregator
  writes its atomic checkpoint there);
- `async on_partitions_revoked(partitions)` / `async on_partitions_assigned(partitions)`: told
  which input partitions this instance lost and gained in a group rebalance, for services whose
  state is per partition (the aggregator drops the parts it no longer owns and loads the ones it
  gained from their checkpoints).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from schemas.messages import Message
from schemas.topics import Topic


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """One decoded input record and where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    message: Message
    raw: bytes
    timestamp_ms: int = 0


@dataclass(frozen=True, slots=True)
class Outbound:
    """One output: a logical `Topic` (resolved in the namespace) or a concrete topic name."""

    topic: Topic | str
    key: str | bytes | None
    message: Message


class Handler(Protocol):
    """The one method every service implements."""

    async def handle(self, record: InboundRecord) -> Sequence[Outbound]:
        """Handle one record; return the records to produce (maybe none).

        Raise `services.errors.InvalidPayload(reason)` (or any non-retriable `FedMoEError`)
        to dead-letter the input, a retriable `FedMoEError` to have it retried.
        """
        ...


@runtime_checkable
class Ticker(Protocol):
    """Optional: periodic work (deadlines)."""

    async def on_tick(self, now: float) -> Sequence[Outbound]:
        """Called every tick with the wall clock; returns records to produce."""
        ...


@runtime_checkable
class Checkpointer(Protocol):
    """Optional: make handled state durable before offsets are committed."""

    async def checkpoint(self) -> None:
        """Persist the state the handled records produced (atomically)."""
        ...


@runtime_checkable
class PartitionListener(Protocol):
    """Optional: hear which input partitions (topic, partition) this instance lost and gained.

    Both are called under the runtime's batch lock, so never concurrently with `handle`,
    `on_tick` or `checkpoint`, except when a revoke gave up waiting for the batch in hand
    (`rebalance_timeout_s`): the revoke is then reported anyway, since the partitions are gone.
    """

    async def on_partitions_revoked(self, partitions: frozenset[tuple[str, int]]) -> None:
        """The partitions moved away; the batch in hand was delivered, checkpointed and
        committed (or abandoned, to be redone by the next owner). Drop their state: the next
        owner continues from the checkpoint, so never write it again."""
        ...

    async def on_partitions_assigned(self, partitions: frozenset[tuple[str, int]]) -> None:
        """The partitions are this instance's now; consumption resumes from their committed
        offsets (records of them may already have been handled)."""
        ...
