"""Fuzzing: random bytes, byte-level mutations and structural mutations of valid encodings
either decode to a valid message or raise a SchemaError, never anything else."""

from __future__ import annotations

import copy
from typing import Any

import msgpack
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import schemas
from tests.unit.schemas.helpers import pack, raw, same
from tests.unit.schemas.strategies import messages

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

INTERESTING = [
    b"\xc1",  # never used
    b"\xc0",
    b"\xdd\xff\xff\xff\xff",  # array 32 bomb
    b"\xdf\xff\xff\xff\xff",  # map 32 bomb
    b"\xdb\x7f\xff\xff\xff",  # str 32
    b"\xc6\xff\xff\xff\xff",  # bin 32
    b"\xc9\xff\xff\xff\xff\x01",  # ext 32
    b"\xd6\xff\x00\x00\x00\x00",  # timestamp
    b"\xd4\x05\x00",  # fixext 1, unknown code
    b"\x91" * 40,
    b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",  # NaN
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",  # uint64 max
    b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00",  # int64 min
]


def check(data: bytes) -> None:
    """`data` decodes to a valid message that round-trips, or raises a SchemaError."""
    try:
        message = schemas.decode(data)
    except schemas.SchemaError as exc:
        error = str(exc)
        assert error, "a rejection must name the problem"
        return
    assert isinstance(message, schemas.Message)
    assert same(schemas.decode(schemas.encode(message)), message)


@FUZZ
@given(st.binary(max_size=2048))
@example(b"")
@example(b"\x80")
@example(b"\x87")
def test_random_bytes(data: bytes) -> None:
    check(data)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**20), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 2**20), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 2**20), st.sampled_from(INTERESTING)),
    st.tuples(st.just("insert"), st.integers(0, 2**20), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("overwrite"), st.integers(0, 2**20), st.sampled_from(INTERESTING)),
    st.tuples(st.just("delete"), st.integers(0, 2**20), st.integers(1, 16)),
    st.tuples(st.just("truncate"), st.integers(0, 2**20), st.just(0)),
)


def mutate(data: bytes, op: tuple[str, int, Any]) -> bytes:
    kind, pos, arg = op
    buf = bytearray(data)
    pos %= len(buf) + 1
    if kind == "flip" and pos < len(buf):
        buf[pos] ^= arg
    elif kind == "set" and pos < len(buf):
        buf[pos] = arg
    elif kind == "insert":
        buf[pos:pos] = arg
    elif kind == "overwrite":
        buf[pos : pos + len(arg)] = arg
    elif kind == "delete":
        del buf[pos : pos + arg]
    elif kind == "truncate":
        del buf[pos:]
    return bytes(buf)


@FUZZ
@given(message=messages, ops=st.lists(mutation, min_size=1, max_size=4))
def test_byte_mutations_of_valid_messages(
    message: schemas.Message, ops: list[tuple[str, int, Any]]
) -> None:
    data = schemas.encode(message)
    for op in ops:
        data = mutate(data, op)
    check(data)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.integers(-3, 3),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["shared", "expert-0", "expert-²", "expert-01", "applied", "quorum"]),
    st.binary(max_size=12),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=24)),
    st.builds(msgpack.ExtType, st.just(schemas.TENSOR_EXT_CODE), st.binary(max_size=24)),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.binary(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths(obj: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside maps/arrays of `obj`."""
    out: list[tuple[Any, ...]] = []
    if isinstance(obj, dict):
        items: Any = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)
    else:
        return out
    for key, value in items:
        out.append((*prefix, key))
        out.extend(paths(value, (*prefix, key)))
    return out


@FUZZ
@given(message=messages, data=st.data())
def test_structural_mutations_of_valid_messages(
    message: schemas.Message, data: st.DataObject
) -> None:
    env = raw(message)
    for _ in range(data.draw(st.integers(1, 3))):
        env = copy.deepcopy(env)
        where = data.draw(st.sampled_from(paths(env)))
        parent: Any = env
        for key in where[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[where[-1]] = data.draw(values)
        elif action == "delete":
            del parent[where[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=8))] = data.draw(values)
        else:
            parent.append(data.draw(values))
    try:
        encoded = pack(env)
    except (ValueError, TypeError, OverflowError):
        return  # not representable in msgpack (e.g. a surrogate in a str)
    check(encoded)
