"""Messages larger than one record: `schemas.chunks` (split, encode_records, Reassembler) and
the `MessageChunk` checks, on its constructor and on hostile wire bytes."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import schemas
from schemas.chunks import Budget, ChunkError, Dropped, Reassembler, encode_records, split
from schemas.errors import InvalidFieldError, OversizeError
from schemas.limits import CHUNK_BYTES, MAX_ASSEMBLED_BYTES, MAX_MESSAGE_BYTES
from schemas.messages import DeviceStatus, MessageChunk, PartVersion
from tests.unit.schemas.helpers import PWNED, Evil, pack, raw, same

pytestmark = pytest.mark.timeout(30)


def status(
    message_id: str = "w-1", device: str = "dev-1", reason: str = "", round_: int = 3
) -> DeviceStatus:
    return DeviceStatus(
        message_id=message_id,
        device_id=device,
        round=round_,
        timestamp=7.5,
        online=True,
        reason=reason,
    )


def sized(size: int, message_id: str = "w-1") -> DeviceStatus:
    """A status whose encoding is exactly `size` bytes (its reason padded)."""
    for k in range(257):
        message = status(message_id, reason="x" * k)
        if len(schemas.encode(message)) == size:
            return message
    raise AssertionError(f"no status encodes to {size} bytes")


def chunks_of(message: schemas.Message, chunk_bytes: int, key: str = "") -> list[MessageChunk]:
    return split(schemas.encode(message), message, key=key, chunk_bytes=chunk_bytes)


def feed(reassembler: Reassembler, chunks: list[MessageChunk], now: float = 0.0) -> list[Any]:
    """`add` every chunk in order; what each call returned."""
    return [reassembler.add(c, now) for c in chunks]


def big_version(nbytes: int = MAX_MESSAGE_BYTES + 1024) -> PartVersion:
    """A part version with one float32 tensor of more than `nbytes` bytes."""
    weights = np.arange(nbytes // 4 + 1, dtype=np.float32)
    return PartVersion(
        message_id="pv-expert-1-9",
        device_id="aggregator",
        round=4,
        timestamp=1.0,
        part="expert-1",
        version=9,
        layout_version=1,
        tensors={"fc1.weight": weights, "fc1.bias": np.ones(3, dtype=np.float32)},
    )


_OPEN: list[Reassembler] = []


def fresh(budget: Budget | None = None) -> Reassembler:
    """A reassembler closed after the test (its spool files with it)."""
    reassembler = Reassembler(budget)
    _OPEN.append(reassembler)
    return reassembler


@pytest.fixture(autouse=True)
def _close_reassemblers() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


# --- split and reassembly ------------------------------------------------------------------------


def test_split_of_a_one_byte_whole_is_one_chunk_of_one_byte() -> None:
    (chunk,) = split(b"\x07", status(), key="shared", chunk_bytes=64)
    assert (chunk.index, chunk.count, chunk.whole_bytes, chunk.data) == (0, 1, 1, b"\x07")
    assert chunk.message_id == "w-1#0"
    assert (chunk.whole_id, chunk.whole_type, chunk.key) == ("w-1", "status", "shared")
    assert (chunk.device_id, chunk.round, chunk.timestamp) == ("dev-1", 3, 7.5)
    assert chunk.digest == hashlib.sha256(b"\x07").digest()


@pytest.mark.parametrize(
    ("size", "chunk_bytes", "count"),
    [
        (150, 4096, 1),  # the whole is shorter than one chunk
        (150, 150, 1),  # exactly one chunk
        (150, 50, 3),  # a multiple of chunk_bytes: the last chunk is full
        (151, 50, 4),  # one byte over: the last chunk holds one byte
        (100, 1, 100),  # one-byte chunks
    ],
)
def test_split_then_reassemble_gives_the_message_back(
    size: int, chunk_bytes: int, count: int
) -> None:
    message = sized(size)
    data = schemas.encode(message)
    chunks = split(data, message, key="k", chunk_bytes=chunk_bytes)
    assert len(chunks) == count
    assert [c.index for c in chunks] == list(range(count))
    assert b"".join(c.data for c in chunks) == data
    assert {(c.count, c.whole_bytes, c.chunk_bytes) for c in chunks} == {(count, size, chunk_bytes)}
    assert len(chunks[-1].data) == size - (count - 1) * chunk_bytes
    reassembler = fresh()
    got = feed(reassembler, chunks)
    assert got[:-1] == [None] * (count - 1)
    assembled = got[-1]
    assert assembled is not None
    assert assembled.message == message
    assert assembled.data == data
    assert len(reassembler) == 0
    assert reassembler.pending_bytes == 0


def test_split_refuses_a_chunk_size_out_of_range() -> None:
    for bad in (0, -1, CHUNK_BYTES + 1):
        with pytest.raises(InvalidFieldError):
            split(b"abc", status(), chunk_bytes=bad)


def test_chunks_in_any_order_reassemble() -> None:
    message = sized(200)
    chunks = chunks_of(message, 16)
    for seed in range(5):
        shuffled = list(chunks)
        random.Random(seed).shuffle(shuffled)
        got = feed(fresh(), shuffled)
        assert got[:-1] == [None] * (len(chunks) - 1)
        assert got[-1] is not None
        assert got[-1].message == message


def test_duplicate_chunks_are_ignored() -> None:
    message = sized(200)
    chunks = chunks_of(message, 64)  # 4 chunks
    reassembler = fresh()
    doubled = [chunks[0], chunks[0], chunks[1], chunks[2], chunks[1], chunks[0]]
    assert feed(reassembler, doubled) == [None] * 6
    assert len(reassembler) == 1
    assembled = reassembler.add(chunks[3], 0.0)
    assert assembled is not None
    assert assembled.message == message
    assert len(reassembler) == 0


def test_a_message_that_fits_is_one_record() -> None:
    message = status()
    assert encode_records(message) == [schemas.encode(message)]
    data = schemas.encode(message)
    assert encode_records(message, max_bytes=len(data)) == [data]


def test_a_message_over_max_bytes_is_its_chunks() -> None:
    message = sized(200)
    data = schemas.encode(message)
    records = encode_records(message, key="expert-2", max_bytes=199, chunk_bytes=64)
    assert len(records) == 4
    chunks = [schemas.decode(r) for r in records]
    assert all(isinstance(c, MessageChunk) for c in chunks)
    assert [c.key for c in chunks if isinstance(c, MessageChunk)] == ["expert-2"] * 4
    reassembler = fresh()
    results = [reassembler.add(c, 0.0) for c in chunks if isinstance(c, MessageChunk)]
    assembled = results[-1]
    assert assembled is not None
    assert assembled.data == data
    assert assembled.message == message


def test_a_part_version_over_8_mib_round_trips_through_encode_records() -> None:
    version = big_version()
    data = schemas.encode(version, max_bytes=MAX_ASSEMBLED_BYTES)
    assert len(data) > MAX_MESSAGE_BYTES
    with pytest.raises(OversizeError):
        schemas.encode(version)  # not as one record
    with pytest.raises(OversizeError):
        schemas.decode(data)
    assert same(schemas.decode(data, max_bytes=MAX_ASSEMBLED_BYTES), version)

    records = encode_records(version, key="expert-1")
    assert len(records) == -(-len(data) // CHUNK_BYTES) >= 3
    assert all(len(r) <= MAX_MESSAGE_BYTES for r in records)
    reassembler = fresh()
    results = []
    for record in records:
        chunk = schemas.decode(record)
        assert isinstance(chunk, MessageChunk)
        assert (chunk.whole_type, chunk.key, chunk.whole_id) == (
            "part-version",
            "expert-1",
            version.message_id,
        )
        results.append(reassembler.add(chunk, 0.0))
    assert results[:-1] == [None] * (len(records) - 1)
    assembled = results[-1]
    assert assembled is not None
    assert assembled.data == data
    assert same(assembled.message, version)


# --- hostile chunks ------------------------------------------------------------------------------


def _contradictions() -> list[tuple[str, MessageChunk]]:
    """(case, a chunk of whole `w-1` that contradicts the chunks `chunks_of(sized(200), 64)`)."""
    message = sized(200)
    second = chunks_of(message, 64)[1]
    longer = sized(260)  # same whole id, another length: another count
    return [
        ("digest", dataclasses.replace(second, digest=bytes(32))),
        ("count", chunks_of(longer, 64)[1]),
        ("whole_type", dataclasses.replace(second, whole_type="telemetry")),
        ("round", dataclasses.replace(second, round=4)),
        ("key", dataclasses.replace(second, key="expert-0")),
    ]


@pytest.mark.parametrize(
    ("case", "chunk"), _contradictions(), ids=[c[0] for c in _contradictions()]
)
def test_a_chunk_contradicting_its_whole_drops_the_whole(case: str, chunk: MessageChunk) -> None:
    first = chunks_of(sized(200), 64)[0]
    reassembler = fresh()
    assert reassembler.add(first, 0.0) is None
    assert len(reassembler) == 1
    with pytest.raises(ChunkError, match="contradicts"):
        reassembler.add(chunk, 0.0)
    assert len(reassembler) == 0, case
    assert reassembler.pending_bytes == 0


def test_corrupted_data_under_a_valid_header_fails_the_sha256() -> None:
    chunks = chunks_of(sized(200), 64)
    flipped = bytes(b ^ 0xFF for b in chunks[1].data)
    chunks[1] = dataclasses.replace(chunks[1], data=flipped)
    reassembler = fresh()
    assert feed(reassembler, chunks[:-1]) == [None] * (len(chunks) - 1)
    with pytest.raises(ChunkError, match="SHA-256"):
        reassembler.add(chunks[-1], 0.0)
    assert len(reassembler) == 0
    assert reassembler.pending_bytes == 0


def _lies() -> list[tuple[str, bytes, schemas.Message]]:
    """(case, the whole's bytes, the message its chunks announce)."""
    announced = status("w-1", "dev-1")
    return [
        ("other message id", schemas.encode(status("w-2", "dev-1")), announced),
        ("other device", schemas.encode(status("w-1", "dev-2")), announced),
        ("other round", schemas.encode(status("w-1", "dev-1", round_=9)), announced),
        ("not a message", b"\xc1 not msgpack at all", announced),
        ("a chunk in a chunk", schemas.encode(chunks_of(sized(200), 64)[0]), announced),
    ]


@pytest.mark.parametrize(("case", "data", "announced"), _lies(), ids=[c[0] for c in _lies()])
def test_a_whole_that_is_not_the_message_announced_is_refused(
    case: str, data: bytes, announced: schemas.Message
) -> None:
    chunks = split(data, announced, chunk_bytes=16)
    reassembler = fresh()
    assert feed(reassembler, chunks[:-1]) == [None] * (len(chunks) - 1)
    with pytest.raises(ChunkError):
        reassembler.add(chunks[-1], 0.0)
    assert len(reassembler) == 0, case


def test_a_whole_of_another_type_than_announced_is_refused() -> None:
    message = status()
    chunks = [dataclasses.replace(c, whole_type="telemetry") for c in chunks_of(message, 16)]
    reassembler = fresh()
    feed(reassembler, chunks[:-1])
    with pytest.raises(ChunkError, match="telemetry"):
        reassembler.add(chunks[-1], 0.0)
    assert len(reassembler) == 0


def test_two_devices_with_the_same_whole_id_do_not_mix() -> None:
    a, b = status("w-1", "dev-a", reason="a" * 90), status("w-1", "dev-b", reason="b" * 120)
    chunks_a, chunks_b = chunks_of(a, 32), chunks_of(b, 32)
    assert len(chunks_a) < len(chunks_b)
    reassembler = fresh()
    results: dict[str, Any] = {}
    for i in range(len(chunks_b)):
        for name, chunks in (("a", chunks_a), ("b", chunks_b)):
            if i < len(chunks):
                got = reassembler.add(chunks[i], 0.0)
                if got is not None:
                    results[name] = got.message
    assert results == {"a": a, "b": b}
    assert len(reassembler) == 0


def test_max_wholes_refuses_a_new_whole() -> None:
    reassembler = fresh(Budget(max_wholes=2))
    firsts = [chunks_of(sized(200, f"w-{i}"), 64) for i in range(3)]
    assert reassembler.add(firsts[0][0], 0.0) is None
    assert reassembler.add(firsts[1][0], 0.0) is None
    with pytest.raises(ChunkError, match="incomplete wholes"):
        reassembler.add(firsts[2][0], 0.0)
    assert len(reassembler) == 2
    # The wholes held still complete, and then there is room again.
    assert feed(reassembler, firsts[0][1:])[-1] is not None
    assert reassembler.add(firsts[2][0], 0.0) is None
    assert len(reassembler) == 2


def test_max_bytes_refuses_a_new_whole() -> None:
    reassembler = fresh(Budget(max_bytes=300))
    one, two = chunks_of(sized(200, "w-1"), 64), chunks_of(sized(200, "w-2"), 64)
    assert reassembler.add(one[0], 0.0) is None
    assert reassembler.pending_bytes == 200
    with pytest.raises(ChunkError, match="300"):
        reassembler.add(two[0], 0.0)
    assert len(reassembler) == 1
    assert reassembler.pending_bytes == 200
    assert feed(reassembler, one[1:])[-1] is not None
    assert reassembler.pending_bytes == 0
    assert reassembler.add(two[0], 0.0) is None
    assert reassembler.pending_bytes == 200


def test_expire_drops_the_old_incomplete_wholes() -> None:
    reassembler = fresh(Budget(max_age_s=10.0))
    old, young = chunks_of(sized(200, "w-old"), 64), chunks_of(sized(200, "w-new"), 64)
    feed(reassembler, old[:2], now=0.0)
    feed(reassembler, young[:1], now=5.0)
    assert reassembler.add(old[2], now=8.0) is None  # later chunks do not make it younger
    assert reassembler.expire(10.0) == []
    assert reassembler.expire(10.5) == [Dropped("dev-1", "w-old", 3, 4)]
    assert len(reassembler) == 1
    assert reassembler.pending_bytes == 200
    assert reassembler.expire(15.5) == [Dropped("dev-1", "w-new", 1, 4)]
    assert len(reassembler) == 0
    assert reassembler.pending_bytes == 0
    # An expired whole's late chunk starts it anew.
    assert reassembler.add(old[3], 20.0) is None
    assert len(reassembler) == 1


def test_floor_is_the_first_offset_of_the_incomplete_wholes_of_a_source() -> None:
    reassembler = fresh()
    p0, p1 = ("t", 0), ("t", 1)
    a, b, c = (chunks_of(sized(200, f"w-{n}"), 64) for n in "abc")
    assert reassembler.floor(p0) is None
    reassembler.add(a[0], 0.0, source=p0, offset=5)
    reassembler.add(b[1], 0.0, source=p0, offset=7)
    reassembler.add(a[1], 0.0, source=p0, offset=8)  # a later chunk does not move the floor
    reassembler.add(c[0], 0.0, source=p1, offset=2)
    assert reassembler.floor(p0) == 5
    assert reassembler.floor(p1) == 2
    assert reassembler.floor(("t", 2)) is None
    assert reassembler.add(a[2], 0.0, source=p0, offset=9) is None
    assert reassembler.add(a[3], 0.0, source=p0, offset=10) is not None
    assert reassembler.floor(p0) == 7  # a is complete: b's first chunk is the floor
    reassembler.forget(p0)
    assert reassembler.floor(p0) is None
    assert reassembler.floor(p1) == 2
    assert len(reassembler) == 1
    assert reassembler.pending_bytes == 200
    reassembler.close()
    assert len(reassembler) == 0
    assert reassembler.floor(p1) is None
    assert reassembler.pending_bytes == 0


# --- MessageChunk checks -------------------------------------------------------------------------

DATA = bytes(range(10))  # a whole of 10 bytes, in chunks of 4: 4 + 4 + 2
DIGEST = hashlib.sha256(DATA).digest()


def chunk_fields(index: int = 1, **changes: Any) -> dict[str, Any]:
    """The constructor arguments of chunk `index` of DATA, with `changes`."""
    start = index * 4
    fields: dict[str, Any] = {
        "message_id": f"up-1/expert-0#{index}",
        "device_id": "dev-1",
        "round": 3,
        "timestamp": 1.0,
        "whole_id": "up-1/expert-0",
        "whole_type": "part-update",
        "key": "expert-0",
        "index": index,
        "count": 3,
        "chunk_bytes": 4,
        "whole_bytes": 10,
        "digest": DIGEST,
        "data": DATA[start : start + 4],
    }
    return fields | changes


def test_the_valid_chunks_construct_and_round_trip() -> None:
    for index in range(3):
        chunk = MessageChunk(**chunk_fields(index))
        assert chunk.start == index * 4
        assert schemas.decode(schemas.encode(chunk)) == chunk


_BIG = MAX_ASSEMBLED_BYTES + 1
_INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("index == count", chunk_fields(3, data=b""), "index"),
    ("index < 0", chunk_fields(-1, data=DATA[:4]), "index"),
    ("count too large", chunk_fields(count=4), "count"),
    ("count too small", chunk_fields(count=2), "count"),
    ("middle chunk short", chunk_fields(1, data=DATA[4:7]), "must hold 4"),
    ("middle chunk long", chunk_fields(1, data=DATA[4:9]), "must hold 4"),
    ("last chunk long", chunk_fields(2, data=DATA[8:10] + b"\x00"), "must hold 2"),
    ("last chunk short", chunk_fields(2, data=DATA[8:9]), "must hold 2"),
    ("digest of 31 bytes", chunk_fields(digest=DIGEST[:31]), "digest"),
    ("digest of 33 bytes", chunk_fields(digest=DIGEST + b"\x00"), "digest"),
    ("message id of another index", chunk_fields(message_id="up-1/expert-0#2"), "message_id"),
    ("message id of another whole", chunk_fields(message_id="up-2/expert-0#1"), "message_id"),
    (
        "whole_bytes over MAX_ASSEMBLED_BYTES",
        chunk_fields(
            0,
            message_id="up-1/expert-0#0",
            whole_bytes=_BIG,
            chunk_bytes=CHUNK_BYTES,
            count=-(-_BIG // CHUNK_BYTES),
            data=bytes(CHUNK_BYTES),
        ),
        "whole_bytes",
    ),
    (
        "chunk_bytes over CHUNK_BYTES",
        chunk_fields(
            0,
            message_id="up-1/expert-0#0",
            whole_bytes=CHUNK_BYTES + 1,
            chunk_bytes=CHUNK_BYTES + 1,
            count=1,
            data=bytes(CHUNK_BYTES + 1),
        ),
        "chunk_bytes",
    ),
    ("chunk_bytes 0", chunk_fields(chunk_bytes=0), "chunk_bytes"),
    ("empty whole_id", chunk_fields(whole_id="", message_id="#1"), "whole_id"),
    ("empty whole_type", chunk_fields(whole_type=""), "whole_type"),
]


@pytest.mark.parametrize(("case", "fields", "match"), _INVALID, ids=[c[0] for c in _INVALID])
def test_an_invalid_chunk_cannot_be_constructed(
    case: str, fields: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidFieldError, match=match):
        MessageChunk(**fields)


_ENVELOPE_KEYS = {"message_id": "id", "device_id": "device", "round": "round", "timestamp": "ts"}


@pytest.mark.parametrize(("case", "fields", "match"), _INVALID, ids=[c[0] for c in _INVALID])
def test_an_invalid_chunk_on_the_wire_is_rejected(
    case: str, fields: dict[str, Any], match: str
) -> None:
    obj = raw(MessageChunk(**chunk_fields(1)))
    for name, value in fields.items():
        if name in _ENVELOPE_KEYS:
            obj[_ENVELOPE_KEYS[name]] = value
        else:
            obj["body"][name] = value
    with pytest.raises(InvalidFieldError, match=match):
        schemas.decode(pack(obj))


def test_chunk_fields_of_the_wrong_wire_type_are_rejected() -> None:
    for name, value in [("data", "text"), ("digest", list(DIGEST)), ("index", 1.0)]:
        obj = raw(MessageChunk(**chunk_fields(1)))
        obj["body"][name] = value
        with pytest.raises(InvalidFieldError):
            schemas.decode(pack(obj))


def test_a_decoded_chunks_data_is_bytes_and_never_unpickled() -> None:
    evil = pickle.dumps(Evil())
    whole = evil + bytes(8 - len(evil) % 8)
    digest = hashlib.sha256(whole).digest()
    chunk = MessageChunk(
        **chunk_fields(
            0,
            message_id="up-1/expert-0#0",
            whole_bytes=len(whole),
            chunk_bytes=len(whole),
            count=1,
            digest=digest,
            data=whole,
        )
    )
    got = schemas.decode(schemas.encode(chunk))
    assert isinstance(got, MessageChunk)
    assert type(got.data) is bytes
    assert got.data == whole
    assert type(got.digest) is bytes
    assert PWNED == []
    # Reassembled, it is not a message: refused, still not unpickled.
    with pytest.raises(ChunkError):
        fresh().add(got, 0.0)
    assert PWNED == []


def test_a_spool_that_cannot_be_written_is_a_chunk_error_and_drops_the_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tempfile

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    message = schemas.DeviceStatus(
        message_id="m", device_id="dev-1", round=1, timestamp=1.0, online=True, reason="r" * 100
    )
    first = split(schemas.encode(message), message, chunk_bytes=32)[0]
    reassembler = Reassembler()
    with pytest.raises(ChunkError, match="cannot spool"):
        reassembler.add(first, 0.0)
    assert len(reassembler) == 0


def test_one_device_cannot_take_the_whole_byte_budget() -> None:
    reassembler = fresh(Budget(max_bytes=1000, max_bytes_per_device=300))
    one, two = chunks_of(sized(200, "w-1"), 64), chunks_of(sized(200, "w-2"), 64)
    assert reassembler.add(one[0], 0.0) is None
    with pytest.raises(ChunkError, match="more than 300 bytes"):
        reassembler.add(two[0], 0.0)
    other = dataclasses.replace(two[0], device_id="dev-2")
    assert reassembler.add(other, 0.0) is None  # another device still has room
    assert len(reassembler) == 2
