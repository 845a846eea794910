"""What a service handler sees and returns (pure types: no broker imports).

A handler is any object with `async handle(record) -> Sequence[Outbound]`. Two optional
capabilities are detected by the runtime at start:

- `async on_tick(now) -> Sequence[Outbound]`: called every `tick_interval_s` from the same task
  as `handle` (never concurrently with it), for deadlines such as a round's;
- `async checkpoint() -> None`: called after the outputs of a batch were acknowledged by Kafka
  and before its offsets are committed, for services whose effect is state (the aggregator
  writes its atomic checkpoint there).
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
