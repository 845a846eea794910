"""Messages larger than one record: split into `MessageChunk`s, reassembled and verified.

A part of a large model (an expert of 2M parameters is 8 MB, a part may reach 256 MB) does not
fit one Kafka record or MQTT message (`MAX_MESSAGE_BYTES`). Such a message is encoded whole, as
usual, and its bytes are cut into chunks of at most `CHUNK_BYTES`; every chunk carries the
whole's size and SHA-256, so the receiver knows where each chunk goes, when it has them all
and whether they are the bytes that were sent. The reassembled bytes are then decoded by the
same codec, with the same checks, as any message.

Why chunks of the encoding rather than of tensors: one mechanism serves every large message
(updates up, part versions down) on both brokers, and what a service handles after reassembly
is exactly the message that was sent. Why not a claim check (an object store holding the
weights, the brokers carrying references): it would add a third stateful server to deploy,
secure and keep alive beside Kafka and Mosquitto, with its own credentials per device; the
chunks travel through the accounts, ACLs, rate limits and acknowledgements that already exist.

`Reassembler` keeps incomplete wholes in unlinked temporary files (one per whole; pages the
kernel may write out), so its memory is O(one chunk) whatever the number of wholes in flight;
only a completed whole is read back, verified and decoded, one at a time. Its budget bounds the
wholes and declared bytes in flight, and `max_age_s` drops a whole whose remaining chunks never
came (a sender that died: it resends the whole when it comes back, until acknowledged).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import IO

from schemas.codec import decode, encode
from schemas.errors import InvalidFieldError, SchemaError
from schemas.limits import CHUNK_BYTES, MAX_ASSEMBLED_BYTES, MAX_MESSAGE_BYTES
from schemas.messages import Message, MessageChunk


class ChunkError(SchemaError):
    """A chunk that cannot be part of its whole, a whole whose bytes fail their digest or do
    not decode to the message the chunks announced, or a reassembly budget exhausted."""


def split(
    data: bytes, whole: Message, *, key: str = "", chunk_bytes: int = CHUNK_BYTES
) -> list[MessageChunk]:
    """The chunks of `data`, the encoding of `whole` (see the module docstring)."""
    if not 0 < chunk_bytes <= CHUNK_BYTES:
        raise InvalidFieldError(f"chunk_bytes must be 1..{CHUNK_BYTES}")
    digest = hashlib.sha256(data).digest()
    count = -(-len(data) // chunk_bytes)
    view = memoryview(data)
    return [
        MessageChunk(
            message_id=f"{whole.message_id}#{i}",
            device_id=whole.device_id,
            round=whole.round,
            timestamp=whole.timestamp,
            whole_id=whole.message_id,
            whole_type=whole.TYPE,
            key=key,
            index=i,
            count=count,
            chunk_bytes=chunk_bytes,
            whole_bytes=len(data),
            digest=digest,
            data=bytes(view[i * chunk_bytes : (i + 1) * chunk_bytes]),
        )
        for i in range(count)
    ]


def encode_records(
    message: Message,
    *,
    key: str = "",
    max_bytes: int = MAX_MESSAGE_BYTES,
    chunk_bytes: int = CHUNK_BYTES,
) -> list[bytes]:
    """The payloads that carry `message`: its encoding when at most `max_bytes`, else the
    encodings of its chunks. Raises `SchemaError` (over `MAX_ASSEMBLED_BYTES` included)."""
    data = encode(message, max_bytes=MAX_ASSEMBLED_BYTES)
    if len(data) <= max_bytes:
        return [data]
    return [encode(chunk) for chunk in split(data, message, key=key, chunk_bytes=chunk_bytes)]


@dataclass(frozen=True, slots=True)
class Budget:
    """What a `Reassembler` holds at most.

    Attributes:
        max_wholes: incomplete wholes at once.
        max_per_device: incomplete wholes of one device at once (so one device cannot take
            every slot: its chunk opening one more is refused).
        max_bytes: their declared sizes together (disk, not memory).
        max_bytes_per_device: one device's declared sizes together (so one device cannot
            take the whole of `max_bytes`).
        max_age_s: an incomplete whole older than this (from its first chunk) is dropped.
    """

    max_wholes: int = 256
    max_per_device: int = 8
    max_bytes: int = 8 * MAX_ASSEMBLED_BYTES
    max_bytes_per_device: int = 2 * MAX_ASSEMBLED_BYTES
    max_age_s: float = 600.0


@dataclass(slots=True)
class _Pending:
    first: MessageChunk
    spool: IO[bytes]
    started: float
    source: Hashable
    first_offset: int
    received: set[int] = field(default_factory=set)

    def matches(self, chunk: MessageChunk) -> bool:
        a, b = self.first, chunk
        return (
            a.whole_type == b.whole_type
            and a.key == b.key
            and a.count == b.count
            and a.chunk_bytes == b.chunk_bytes
            and a.whole_bytes == b.whole_bytes
            and a.digest == b.digest
            and a.round == b.round
        )


@dataclass(frozen=True, slots=True)
class Assembled:
    """A whole message rebuilt from its chunks, its encoding, and the offset its first chunk
    was read at (a consumer that fails to handle it must not commit past that)."""

    message: Message
    data: bytes
    first_offset: int = -1


@dataclass(frozen=True, slots=True)
class Dropped:
    """An incomplete whole given up (`Reassembler.expire`), and where its chunks came from."""

    device_id: str
    whole_id: str
    received: int
    count: int
    source: Hashable = None


class Reassembler:
    """Incomplete wholes by (device, whole id); see the module docstring.

    Args:
        budget: the limits on what is held (`expire` must be called now and then: `add`
            never drops a whole for its age).
        spool_dir: where the temporary files go (the system's temporary directory if None).
        ordered: the chunks of a whole arrive in order (one Kafka partition): a chunk other
            than the first that belongs to no incomplete whole is a stray (a duplicate of a
            whole already completed, or the tail of one whose head was refused) and is
            ignored and counted (`strays`), so it cannot hold a whole open, and commits back,
            until its age runs out.
    """

    def __init__(
        self, budget: Budget | None = None, spool_dir: str | None = None, *, ordered: bool = False
    ) -> None:
        self._budget = budget if budget is not None else Budget()
        self._spool_dir = spool_dir
        self._ordered = ordered
        self.strays = 0
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """The declared sizes of the incomplete wholes together."""
        return self._bytes

    def add(
        self, chunk: MessageChunk, now: float, *, source: Hashable = None, offset: int = -1
    ) -> Assembled | None:
        """Store one chunk; the whole message once its last chunk came, else None.

        Args:
            chunk: a decoded chunk (its `device_id` vouched for by whoever received it).
            now: the clock, for `Budget.max_age_s`.
            source, offset: where the chunk was read (a Kafka partition and offset), for
                `floor`.

        Raises:
            ChunkError: the chunk contradicts the earlier chunks of its whole (the whole is
                dropped), the budget is full, the spool cannot be written (the whole is
                dropped: a full disk must not stop the service), or the completed whole fails
                its digest or does not decode to the message announced (the whole is dropped).
                A duplicate chunk is not an error: it is ignored.
        """
        key = (chunk.device_id, chunk.whole_id)
        pending = self._pending.get(key)
        if pending is None:
            if self._ordered and chunk.index != 0:
                self.strays += 1
                return None
            pending = self._start(key, chunk, now, source, offset)
        elif not pending.matches(chunk):
            self._drop(key)
            raise ChunkError(f"chunk {chunk.index} of {chunk.whole_id!r} contradicts the first")
        if chunk.index in pending.received:
            return None
        try:
            pending.spool.seek(chunk.start)
            pending.spool.write(chunk.data)
            pending.received.add(chunk.index)
            if len(pending.received) < chunk.count:
                return None
            pending.spool.seek(0)
            data = pending.spool.read()
        except OSError as exc:
            self._drop(key)
            raise ChunkError(f"{chunk.whole_id!r}: cannot spool: {exc}") from exc
        self._drop(key)  # whatever follows, this whole is done
        return Assembled(_assembled(data, pending.first), data, pending.first_offset)

    def floor(self, source: Hashable) -> int | None:
        """The smallest offset of a first chunk from `source` whose whole is incomplete: a
        consumer must not commit past it, or a restart would lose that whole's chunks."""
        offsets = [p.first_offset for p in self._pending.values() if p.source == source]
        return min(offsets) if offsets else None

    def expire(self, now: float) -> list[Dropped]:
        """Drop the incomplete wholes older than the budget's `max_age_s`."""
        old = [k for k, p in self._pending.items() if now - p.started > self._budget.max_age_s]
        dropped = []
        for key in old:
            pending = self._pending[key]
            dropped.append(
                Dropped(key[0], key[1], len(pending.received), pending.first.count, pending.source)
            )
            self._drop(key)
        return dropped

    def forget(self, source: Hashable) -> None:
        """Drop the incomplete wholes read from `source` (a partition this consumer lost)."""
        for key in [k for k, p in self._pending.items() if p.source == source]:
            self._drop(key)

    def close(self) -> None:
        """Drop everything held."""
        for key in list(self._pending):
            self._drop(key)

    def _start(
        self, key: tuple[str, str], chunk: MessageChunk, now: float, source: Hashable, offset: int
    ) -> _Pending:
        budget = self._budget
        if len(self._pending) >= budget.max_wholes:
            raise ChunkError(f"{budget.max_wholes} incomplete wholes held already")
        mine = [p for (device, _), p in self._pending.items() if device == key[0]]
        if len(mine) >= budget.max_per_device:
            raise ChunkError(
                f"{budget.max_per_device} incomplete wholes of {key[0]!r} held already"
            )
        if sum(p.first.whole_bytes for p in mine) + chunk.whole_bytes > budget.max_bytes_per_device:
            raise ChunkError(
                f"{key[0]!r} would hold more than {budget.max_bytes_per_device} bytes of "
                "incomplete wholes"
            )
        if self._bytes + chunk.whole_bytes > budget.max_bytes:
            raise ChunkError(
                f"{chunk.whole_bytes} more bytes would exceed the {budget.max_bytes} held at most"
            )
        try:
            spool = tempfile.TemporaryFile(dir=self._spool_dir)  # noqa: SIM115 (closed in _drop)
        except OSError as exc:
            raise ChunkError(f"{chunk.whole_id!r}: cannot spool: {exc}") from exc
        pending = _Pending(chunk, spool, now, source, offset)
        self._pending[key] = pending
        self._bytes += chunk.whole_bytes
        return pending

    def _drop(self, key: tuple[str, str]) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            self._bytes -= pending.first.whole_bytes
            pending.spool.close()


def _assembled(data: bytes, first: MessageChunk) -> Message:
    if hashlib.sha256(data).digest() != first.digest:
        raise ChunkError(f"{first.whole_id!r}: the reassembled bytes fail their SHA-256")
    try:
        message = decode(data, max_bytes=MAX_ASSEMBLED_BYTES)
    except SchemaError as exc:
        raise ChunkError(f"{first.whole_id!r}: {type(exc).__name__}: {exc}") from exc
    if (
        first.whole_type != message.TYPE
        or message.message_id != first.whole_id
        or message.device_id != first.device_id
        or message.round != first.round
    ):
        raise ChunkError(
            f"{first.whole_id!r}: the whole is a {message.TYPE!r} {message.message_id!r} of "
            f"{message.device_id!r}, round {message.round}; its chunks announced a "
            f"{first.whole_type!r} of {first.device_id!r}, round {first.round}"
        )
    return message
