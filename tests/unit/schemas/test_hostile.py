"""Hostile input: every rejection by `decode` is a SchemaError that names the problem."""

from __future__ import annotations

import copy
import math
import pickle
import random
import struct
import time
from typing import Any

import msgpack
import numpy as np
import pytest

import schemas
from schemas.limits import (
    MAX_CONTAINER_LEN,
    MAX_CONTAINERS,
    MAX_DEPTH,
    MAX_MAP_ENTRIES,
    MAX_MESSAGE_BYTES,
    MAX_STR_BYTES,
)
from tests.unit.schemas.helpers import ENV, PWNED, Evil, pack, raw, samples


def _status() -> dict[str, Any]:
    return raw(schemas.DeviceStatus(**ENV, online=True, reason="ok"))


def _part_version() -> dict[str, Any]:
    return raw(samples()[5])


def _update() -> dict[str, Any]:
    return raw(samples()[3])


def _reject(
    data: bytes | bytearray | memoryview, error: type[schemas.SchemaError], match: str | None = None
) -> str:
    with pytest.raises(error, match=match) as info:
        schemas.decode(data)
    assert str(info.value), "the error must name the problem"
    return str(info.value)


# --- not msgpack, not an envelope -----------------------------------------------------------------


def test_random_bytes() -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        data = rng.randbytes(rng.randrange(0, 64))
        try:
            schemas.decode(data)
        except schemas.SchemaError as exc:
            error = str(exc)
            assert error
        else:  # pragma: no cover - astronomically unlikely
            pytest.fail(f"random bytes decoded: {data!r}")


@pytest.mark.parametrize("message", samples(), ids=lambda m: type(m).__name__)
def test_every_prefix_is_rejected(message: schemas.Message) -> None:
    data = schemas.encode(message)
    for end in range(len(data)):
        _reject(data[:end], schemas.MalformedError)


def test_trailing_bytes() -> None:
    data = schemas.encode(samples()[0])
    _reject(data + b"\x00", schemas.MalformedError, "trailing bytes")
    _reject(data + data, schemas.MalformedError, "trailing bytes")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used byte
        b"\xc0",  # nil
        b"\x01",
        b"\x90",  # empty array
        b"\xa3abc",
        pack([1, 2, 3]),
        b"\xd6\xff\x00\x00\x00\x01",  # msgpack Timestamp
    ],
)
def test_not_an_envelope(data: bytes) -> None:
    _reject(data, schemas.MalformedError)


@pytest.mark.parametrize("data", [None, "text", 123, [1]])
def test_not_bytes(data: Any) -> None:
    _reject(data, schemas.MalformedError, "expected bytes")


def test_bytes_like_inputs_are_accepted() -> None:
    data = schemas.encode(samples()[0])
    assert schemas.decode(bytearray(data)) == schemas.decode(data)
    assert schemas.decode(memoryview(data)) == schemas.decode(data)


def test_invalid_utf8() -> None:
    env = _status()
    data = pack(env).replace(b"\xa2ok", b"\xa2\xff\xfe")
    _reject(data, schemas.MalformedError, "not valid msgpack")


# --- size and length bombs ------------------------------------------------------------------------


def test_oversize_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("decoding work started on oversize input")

    monkeypatch.setattr(msgpack, "unpackb", boom)
    big = b"\x00" * (MAX_MESSAGE_BYTES + 1)
    for data in (big, bytearray(big), memoryview(big)):
        _reject(data, schemas.OversizeError, str(MAX_MESSAGE_BYTES))


@pytest.mark.parametrize(
    "header",
    [
        b"\xdd\xff\xff\xff\xff",  # array 32, 2^32-1 items
        b"\xdc\xff\xff",  # array 16
        b"\xdf\xff\xff\xff\xff",  # map 32
        b"\xde\xff\xff",  # map 16
        b"\xdb\xff\xff\xff\xff",  # str 32
        b"\xc6\xff\xff\xff\xff",  # bin 32
        b"\xc9\xff\xff\xff\xff\x01",  # ext 32, our tensor code
    ],
)
def test_length_bombs(header: bytes) -> None:
    # Alone, and as the value of an envelope field.
    for data in (header + b"\x00" * 16, b"\x81\xa4body" + header + b"\x00" * 16):
        start = time.perf_counter()
        _reject(data, schemas.MalformedError)
        assert time.perf_counter() - start < 0.5


def test_container_and_string_limits() -> None:
    env = _status()
    env["body"]["reason"] = "x" * (MAX_STR_BYTES + 1)
    _reject(pack(env), schemas.MalformedError, "max_str_len")
    env = _status()
    env["extra"] = list(range(MAX_CONTAINER_LEN + 1))
    _reject(pack(env), schemas.MalformedError, "max_array_len")
    env = _status()
    env["extra"] = {str(i): i for i in range(MAX_CONTAINER_LEN + 1)}
    _reject(pack(env), schemas.MalformedError, "max_map_len")


def _nest(depth: int) -> object:
    """`depth` levels of arrays/maps (alternating), innermost holding a nil."""
    obj: object = None
    for level in range(depth):
        obj = [obj] if level % 2 else {"k": obj}
    return obj


def test_nesting_limit_is_exact() -> None:
    # The envelope map is depth 1; a newer minor may carry unknown keys, which are ignored.
    env = _status()
    env["v"] = [1, 99]
    env["future"] = _nest(MAX_DEPTH - 1)
    assert isinstance(schemas.decode(pack(env)), schemas.DeviceStatus)
    env["future"] = _nest(MAX_DEPTH)
    _reject(pack(env), schemas.MalformedError, "nesting deeper than")


@pytest.mark.parametrize("unit", [b"\x91", b"\x81\xa1k", b"\xdc\x00\x01"])
def test_100k_deep_nesting_neither_crashes_nor_hangs(unit: bytes) -> None:
    data = unit * 100_000 + b"\xc0"
    start = time.perf_counter()
    _reject(data, schemas.MalformedError, "nesting deeper than")
    _reject(unit * 100_000, schemas.MalformedError)  # truncated as well
    assert time.perf_counter() - start < 1.0


def _wide(elem: bytes, budget: int) -> bytes:
    """An array of arrays of 4000 `elem`s, as many as fit in `budget` bytes."""
    inner = b"\xdc" + struct.pack(">H", 4000) + elem * 4000
    count = budget // len(inner) - 1
    return b"\xdc" + struct.pack(">H", count) + inner * count


@pytest.mark.parametrize("elem", [b"\x90", b"\x91\x90", b"\x81\xa0\xc0", b"\xc0"])
@pytest.mark.parametrize("where", ["field", "ignored"])
def test_worst_case_decode_is_bounded(elem: bytes, where: str) -> None:
    # Just under the size cap, as many objects as the format allows, in a known field and in an
    # ignored key of a newer minor: refused quickly, before millions of objects are built.
    env = _status()
    if where == "field":
        env["body"] = {"online": True, "reason": "BLOB"}
    else:
        env["v"] = [1, 99]
        env["junk"] = "BLOB"
    data = pack(env).replace(pack("BLOB"), _wide(elem, MAX_MESSAGE_BYTES - 200))
    assert len(data) <= MAX_MESSAGE_BYTES
    start = time.perf_counter()
    if elem == b"\xc0" and where == "ignored":
        # ~2,000 arrays of nils: within every budget, so a newer minor's extra key is fine.
        assert isinstance(schemas.decode(data), schemas.DeviceStatus)
    else:
        with pytest.raises(schemas.SchemaError, match=r"maps and arrays|map entries|expected str"):
            schemas.decode(data)
    assert time.perf_counter() - start < 2.0


def test_container_budget_is_exact() -> None:
    # The envelope, "v" and "body" are 3 containers; fill the rest in an ignored key.
    env = _status()
    env["v"] = [1, 99]
    env["junk"] = "BLOB"
    spare = MAX_CONTAINERS - 3 - 5  # the "junk" array and its 4 arrays of arrays
    for extra, ok in ((0, True), (1, False)):
        total = spare + extra
        rows = [total // 4 + (i < total % 4) for i in range(4)]
        blob = b"\x94" + b"".join(b"\xcd" + struct.pack(">H", n) + b"\x90" * n for n in rows)
        blob = blob.replace(b"\xcd", b"\xdc")  # array 16 headers
        data = pack(env).replace(pack("BLOB"), blob)
        if ok:
            assert isinstance(schemas.decode(data), schemas.DeviceStatus)
        else:
            _reject(data, schemas.MalformedError, f"more than {MAX_CONTAINERS} maps and arrays")


def test_map_entry_budget() -> None:
    env = _status()
    env["v"] = [1, 99]
    env["junk"] = [{f"k{i}": 0 for i in range(4096)} for _ in range(MAX_MAP_ENTRIES // 4096 + 1)]
    _reject(pack(env), schemas.MalformedError, f"more than {MAX_MAP_ENTRIES} map entries")


def test_duplicate_map_keys() -> None:
    data = pack(_status())
    # The envelope's "id" key appears twice: a parser differential waiting to happen.
    dup = data.replace(b"\x87", b"\x88", 1) + pack("id") + pack("other")
    _reject(dup, schemas.MalformedError, "duplicate map key")


# --- map keys, ext codes, pickle ------------------------------------------------------------------


def test_non_string_map_keys() -> None:
    _reject(pack({1: 2}), schemas.MalformedError, "not allowed for map key")
    _reject(b"\x81\x80\x00", schemas.MalformedError)  # a map as a key
    env = _status()
    env["body"][b"online"] = True
    _reject(pack(env), schemas.InvalidFieldError, "unknown field")
    env = _part_version()
    tensors = env["body"]["tensors"]
    env["body"]["tensors"] = {k.encode(): v for k, v in tensors.items()}
    _reject(pack(env), schemas.InvalidFieldError, "is not a str")


@pytest.mark.parametrize("code", [0, 2, 5, 127, -2, -128])
def test_unknown_ext_codes(code: int) -> None:
    env = _part_version()
    env["body"]["tensors"]["w"] = msgpack.ExtType(99, b"\x00" * 8)
    # msgpack.ExtType refuses negative (reserved) codes, so patch the fixext8 header.
    data = pack(env).replace(b"\xd7\x63", b"\xd7" + struct.pack("b", code))
    _reject(data, schemas.MalformedError, f"unknown msgpack ext code {code}")


def test_msgpack_timestamp_where_a_tensor_or_float_belongs() -> None:
    env = _part_version()
    env["body"]["tensors"]["w"] = msgpack.Timestamp(1, 0)
    _reject(pack(env), schemas.InvalidFieldError, "expected tensor, got Timestamp")
    env = _status()
    env["ts"] = msgpack.Timestamp(1, 0)
    _reject(pack(env), schemas.InvalidFieldError, "expected float, got Timestamp")


def test_pickle_payload_is_never_unpickled() -> None:
    evil = pickle.dumps(Evil())
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        for data in (pickle.dumps(Evil(), protocol=proto), pickle.dumps({"v": [1, 0]}, proto)):
            with pytest.raises(schemas.SchemaError):
                schemas.decode(data)
    # As a bin field, it stays bytes.
    letter = samples()[-1]
    env = raw(letter)
    env["body"]["original"] = evil
    env["body"]["original_size"] = len(evil)
    back = schemas.decode(pack(env))
    assert isinstance(back, schemas.DeadLetter)
    assert back.original == evil
    # Where a tensor belongs: as bin, and as the data of a tensor ext.
    env = _part_version()
    env["body"]["tensors"]["w"] = evil
    _reject(pack(env), schemas.InvalidFieldError, "expected tensor, got bytes")
    env["body"]["tensors"]["w"] = msgpack.ExtType(schemas.TENSOR_EXT_CODE, evil)
    _reject(pack(env), schemas.TensorError)
    assert PWNED == []


# --- tensors --------------------------------------------------------------------------------------


def _tensor_ext(code: int, shape: tuple[int, ...], data: bytes) -> msgpack.ExtType:
    header = struct.pack("<BBBB", 1, code, len(shape), 0) + struct.pack(f"<{len(shape)}I", *shape)
    header += b"\x00" * (-len(header) % 8)
    return msgpack.ExtType(schemas.TENSOR_EXT_CODE, header + data)


@pytest.mark.parametrize(
    ("ext", "match"),
    [
        (_tensor_ext(0, (2,), b"\x00" * 8), "dtype code 0"),
        (_tensor_ext(8, (2,), b"\x00" * 8), "dtype code 8"),
        (_tensor_ext(1, (3,), b"\x00" * 8), "needs 12"),
        (_tensor_ext(1, (2,), b"\x00" * 9), "needs 8"),
        (_tensor_ext(1, (2, 2), b"\x00" * 8), "needs 16"),
        (_tensor_ext(1, (1, 1, 1, 1, 1), b"\x00" * 4), "rank 5"),
        (_tensor_ext(1, (4096, 4096, 2), b""), "elements"),
        (_tensor_ext(1, (2**32 - 1,), b""), "exceeds"),
        (_tensor_ext(7, (2,), b"\x01\x02"), "bool"),
        (msgpack.ExtType(schemas.TENSOR_EXT_CODE, b""), "truncated"),
        (msgpack.ExtType(schemas.TENSOR_EXT_CODE, b"\x01\x01\x02\x00\x02\x00"), "truncated"),
        (msgpack.ExtType(schemas.TENSOR_EXT_CODE, b"\x02\x01\x00\x00" + b"\x00" * 8), "format"),
    ],
)
def test_bad_tensors(ext: msgpack.ExtType, match: str) -> None:
    env = _part_version()
    env["body"]["tensors"]["w"] = ext
    _reject(pack(env), schemas.TensorError, match)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", ["<f2", "<f4", "<f8"])
def test_non_finite_part_version_tensors(value: float, dtype: str) -> None:
    arr = np.array([1.0, value], dtype=dtype)
    env = _part_version()
    env["body"]["tensors"]["w"] = _tensor_ext(
        {"<f4": 1, "<f8": 2, "<f2": 3}[dtype], (2,), arr.tobytes()
    )
    _reject(pack(env), schemas.InvalidFieldError, "non-finite")


def test_non_finite_is_allowed_in_update_payloads() -> None:
    # Finite checks of updates happen where they enter aggregation (moe/), not on the wire.
    env = _update()
    arr = np.array([np.nan, np.inf], dtype="<f4")
    env["body"]["parts"][0]["tensors"]["w"] = _tensor_ext(1, (2,), arr.tobytes())
    back = schemas.decode(pack(env))
    assert isinstance(back, schemas.ModelUpdate)
    assert np.isnan(back.parts[0].tensors["w"][0])


# --- fields ---------------------------------------------------------------------------------------


def _with(env: dict[str, Any], path: tuple[Any, ...], value: object) -> bytes:
    env = copy.deepcopy(env)
    node = env
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return pack(env)


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("round",), "3", "round: expected int, got str"),
        (("round",), True, "round: expected int, got bool"),
        (("round",), 3.0, "round: expected int, got float"),
        (("round",), None, "round: expected int, got nil"),
        (("round",), -1, "round"),
        (("round",), 2**31, "round"),
        (("id",), 7, "message_id: expected str"),
        (("id",), "", "message_id"),
        (("id",), "a\x00b", "message_id"),
        (("device",), "a/b", "device_id"),
        (("device",), "+", "device_id"),
        (("ts",), "now", "timestamp: expected float, got str"),
        (("ts",), True, "timestamp: expected float, got bool"),
        (("ts",), -1.0, "timestamp"),
        (("ts",), math.nan, "timestamp"),
        (("body", "online"), 1, "online: expected bool, got int"),
        (("body", "online"), "true", "online: expected bool, got str"),
        (("body", "reason"), b"bytes", "reason: expected str, got bytes"),
        (("body", "reason"), ["x"], "reason: expected str, got array"),
        (("body", "reason"), "x" * 1000, "reason too long"),
    ],
)
def test_wrong_field_values(path: tuple[str, ...], value: object, match: str) -> None:
    _reject(_with(_status(), path, value), schemas.InvalidFieldError, match)


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("body", "parts"), {}, "parts: expected array, got map"),
        (("body", "parts"), [], "parts"),
        (("body", "parts", 0), [], r"parts\[0\]: expected map, got array"),
        (("body", "parts", 0, "part"), "expert-²", "part"),
        (("body", "parts", 0, "part"), "expert-" + "9" * 5000, "part"),
        (("body", "parts", 0, "weight"), "1", r"parts\[0\].weight: expected float"),
        (("body", "parts", 0, "weight"), -1.0, "weight"),
        (("body", "parts", 0, "tensors"), [], "tensors: expected map, got array"),
        (("body", "parts", 0, "tensors"), {}, "tensors per part"),
        (("body", "parts", 0, "tensors", "w"), [1.0, 2.0], "expected tensor, got array"),
        (("body", "parts", 0, "unknown"), 1, "unknown field"),
        (("body", "num_samples"), 1.5, "num_samples: expected int, got float"),
        (("body", "num_samples"), -1, "num_samples"),
    ],
)
def test_wrong_nested_values(path: tuple[Any, ...], value: object, match: str) -> None:
    _reject(_with(_update(), path, value), schemas.InvalidFieldError, match)


def test_duplicate_parts_and_unsorted_experts() -> None:
    env = _update()
    env["body"]["parts"][1] = env["body"]["parts"][0]
    _reject(pack(env), schemas.InvalidFieldError, "duplicate part")
    env = raw(samples()[2])
    env["body"]["experts"] = [3, 0]
    _reject(pack(env), schemas.InvalidFieldError, "sorted")


def test_ints_are_accepted_for_float_fields() -> None:
    env = _status()
    env["ts"] = 5
    back = schemas.decode(pack(env))
    assert back.timestamp == 5.0
    assert type(back.timestamp) is float


@pytest.mark.parametrize("key", ["id", "device", "round", "ts"])
def test_missing_envelope_field(key: str) -> None:
    env = _status()
    del env[key]
    _reject(pack(env), schemas.InvalidFieldError, f"missing envelope field '{key}'")


@pytest.mark.parametrize("key", ["v", "type", "body"])
def test_missing_envelope_structure(key: str) -> None:
    env = _status()
    del env[key]
    _reject(pack(env), schemas.MalformedError, f"'{key}'")


def test_missing_body_fields() -> None:
    env = _status()
    del env["body"]["online"]
    _reject(pack(env), schemas.InvalidFieldError, "missing field 'online'")
    env = _update()
    del env["body"]["parts"][0]["tensors"]
    _reject(pack(env), schemas.InvalidFieldError, "missing field 'tensors'")


def test_fields_with_defaults_may_be_missing() -> None:
    env = _status()
    del env["body"]["reason"]
    back = schemas.decode(pack(env))
    assert isinstance(back, schemas.DeviceStatus)
    assert back.reason == ""


def test_envelope_fields_do_not_belong_in_the_body() -> None:
    env = _status()
    env["body"]["message_id"] = "x"
    _reject(pack(env), schemas.InvalidFieldError, "unknown field")


def test_body_and_envelope_shapes() -> None:
    body: object
    for body in (None, [], "x", 1):
        _reject(_with(_status(), ("body",), body), schemas.MalformedError, "'body' must be a map")
    _reject(_with(_status(), ("type",), 1), schemas.MalformedError, "'type' must be a str")


# --- types and versions ---------------------------------------------------------------------------


def test_unknown_type() -> None:
    _reject(_with(_status(), ("type",), "nope"), schemas.UnknownMessageTypeError, "'nope'")
    _reject(_with(_status(), ("type",), ""), schemas.UnknownMessageTypeError)


@pytest.mark.parametrize("version", [[2, 0], [0, 0], [0, 9], [99, 0], [2**64 - 1, 0]])
def test_unknown_major_version(version: list[int]) -> None:
    _reject(_with(_status(), ("v",), version), schemas.UnsupportedVersionError, "not supported")


def test_unknown_major_is_refused_before_the_rest_is_read() -> None:
    # A future major may change the envelope entirely.
    _reject(pack({"v": [2, 0], "whatever": 1}), schemas.UnsupportedVersionError)


@pytest.mark.parametrize("version", [None, "1.0", 1, [1], [1, 0, 0], [True, 0], [-1, 0], [1, 0.5]])
def test_malformed_version(version: object) -> None:
    _reject(_with(_status(), ("v",), version), schemas.MalformedError, "'v' must be")


def test_newer_minor_ignores_unknown_keys() -> None:
    env = _update()
    env["v"] = [schemas.SCHEMA_VERSION[0], schemas.SCHEMA_VERSION[1] + 1]
    env["trace"] = {"span": "abc"}
    env["body"]["compression"] = "none"
    env["body"]["parts"][0]["checksum"] = b"\x00"
    back = schemas.decode(pack(env))
    assert isinstance(back, schemas.ModelUpdate)


def test_same_minor_rejects_unknown_keys() -> None:
    _reject(_with(_status(), ("trace",), 1), schemas.InvalidFieldError, "unknown key")
    _reject(_with(_status(), ("body", "extra"), 1), schemas.InvalidFieldError, "unknown field")


def test_newer_minor_still_validates_known_fields() -> None:
    env = _status()
    env["v"] = [1, 5]
    env["body"]["online"] = "yes"
    _reject(pack(env), schemas.InvalidFieldError, "online")
