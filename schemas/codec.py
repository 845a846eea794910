"""The msgpack codec: messages to the envelope bytes and back.

Envelope (a msgpack map)::

    {"v": [major, minor], "type": TYPE, "id": message_id, "device": device_id,
     "round": round, "ts": timestamp, "body": {field: value, ...}}

Body values follow the field annotations: nested dataclasses as maps, tuples as arrays,
`Mapping[str, X]` as maps with str keys, bytes as bin, `numpy.ndarray` as the tensor ExtType
(`schemas.tensor`). Decoding is type-directed and strict: a wrong type, a missing field, or an
unknown key is an `InvalidFieldError` (unknown keys are ignored only when the sender's minor
version is newer than ours). Every rejection by `decode` is a `SchemaError`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import msgpack
import numpy as np

from schemas.errors import (
    InvalidFieldError,
    MalformedError,
    OversizeError,
    SchemaError,
    UnexpectedMessageTypeError,
    UnknownMessageTypeError,
    UnsupportedVersionError,
)
from schemas.limits import (
    MAX_CONTAINER_LEN,
    MAX_CONTAINERS,
    MAX_DEPTH,
    MAX_MAP_ENTRIES,
    MAX_MESSAGE_BYTES,
    MAX_STR_BYTES,
)
from schemas.messages import MESSAGE_TYPES, Message
from schemas.tensor import TENSOR_EXT_CODE, pack_tensor, unpack_tensor

SCHEMA_VERSION: Final = (1, 1)

_CONTAINER_TYPES: Final = frozenset({dict, tuple})

M = TypeVar("M", bound=Message)

_ENVELOPE_KEYS: Final = frozenset({"v", "type", "id", "device", "round", "ts", "body"})
_MESSAGE_FIELDS: Final = frozenset({"message_id", "device_id", "round", "timestamp"})


def _registry() -> dict[str, type[Message]]:
    types: dict[str, type[Message]] = {}
    for cls in MESSAGE_TYPES:
        if not cls.TYPE or cls.TYPE in types:
            raise RuntimeError(f"message type {cls.TYPE!r} of {cls.__name__} is empty or taken")
        types[cls.TYPE] = cls
    return types


_TYPES: Final = _registry()


def _ext_hook(code: int, data: bytes) -> np.ndarray:
    if code != TENSOR_EXT_CODE:
        raise MalformedError(f"unknown msgpack ext code {code}")
    return unpack_tensor(data)


_UNPACK_OPTIONS: Final[dict[str, Any]] = {
    "raw": False,
    "strict_map_key": True,
    # Arrays as tuples: the empty one is a singleton and tuples of scalars leave the cyclic GC,
    # which keeps a hostile input of millions of tiny arrays several times cheaper to unpack.
    "use_list": False,
    "ext_hook": _ext_hook,
    "max_str_len": MAX_STR_BYTES,
    "max_array_len": MAX_CONTAINER_LEN,
    "max_map_len": MAX_CONTAINER_LEN,
}

# --- type-directed conversion ------------------------------------------------------------------

# (value, path, lenient) -> value. `lenient`: ignore unknown keys of nested maps (newer minor).
_Decoder = Callable[[object, str, bool], object]
_Encoder = Callable[[object, str], object]


_WIRE_NAMES: Final = {tuple: "array", dict: "map", type(None): "nil", np.ndarray: "tensor"}


def _tname(value: object) -> str:
    """The msgpack name of a decoded value's type (the Python name for anything else)."""
    return _WIRE_NAMES.get(type(value), type(value).__name__)


def _short(key: object) -> str:
    """A short repr for error messages (never walks a container)."""
    if not isinstance(key, str | bytes | int | float | None):
        return f"<{_tname(key)}>"
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


def _scalar(kind: type) -> tuple[_Encoder, _Decoder]:
    def enc(value: object, path: str) -> object:
        if type(value) is bool and kind is not bool:
            raise InvalidFieldError(f"{path}: expected {kind.__name__}, got bool")
        if kind is float and isinstance(value, int | float):
            try:
                return float(value)
            except OverflowError as exc:
                raise InvalidFieldError(f"{path}: {value!r:.40} does not fit a float") from exc
        if not isinstance(value, kind):
            raise InvalidFieldError(f"{path}: expected {kind.__name__}, got {_tname(value)}")
        return value

    def dec(value: object, path: str, lenient: bool) -> object:
        if type(value) is kind:
            return value
        if kind is float and type(value) is int:
            return float(value)
        raise InvalidFieldError(f"{path}: expected {kind.__name__}, got {_tname(value)}")

    return enc, dec


def _tensor() -> tuple[_Encoder, _Decoder]:
    def enc(value: object, path: str) -> object:
        if not isinstance(value, np.ndarray):
            raise InvalidFieldError(f"{path}: expected ndarray, got {_tname(value)}")
        try:
            return pack_tensor(value)
        except SchemaError as exc:
            raise type(exc)(f"{path}: {exc}") from exc

    def dec(value: object, path: str, lenient: bool) -> object:
        if not isinstance(value, np.ndarray):
            raise InvalidFieldError(f"{path}: expected tensor, got {_tname(value)}")
        return value

    return enc, dec


def _sequence(item: tuple[_Encoder, _Decoder]) -> tuple[_Encoder, _Decoder]:
    item_enc, item_dec = item

    def enc(value: object, path: str) -> object:
        if not isinstance(value, tuple | list):
            raise InvalidFieldError(f"{path}: expected tuple, got {_tname(value)}")
        return [item_enc(x, f"{path}[{i}]") for i, x in enumerate(value)]

    def dec(value: object, path: str, lenient: bool) -> object:
        if type(value) is not tuple:
            raise InvalidFieldError(f"{path}: expected array, got {_tname(value)}")
        return tuple(item_dec(x, f"{path}[{i}]", lenient) for i, x in enumerate(value))

    return enc, dec


def _mapping(item: tuple[_Encoder, _Decoder]) -> tuple[_Encoder, _Decoder]:
    item_enc, item_dec = item

    def enc(value: object, path: str) -> object:
        if not isinstance(value, Mapping):
            raise InvalidFieldError(f"{path}: expected a mapping, got {_tname(value)}")
        out: dict[str, object] = {}
        for key, x in value.items():
            if type(key) is not str:
                raise InvalidFieldError(f"{path}: key {_short(key)} is not a str")
            out[key] = item_enc(x, f"{path}[{_short(key)}]")
        return out

    def dec(value: object, path: str, lenient: bool) -> object:
        if type(value) is not dict:
            raise InvalidFieldError(f"{path}: expected map, got {_tname(value)}")
        out: dict[str, object] = {}
        for key, x in value.items():
            if type(key) is not str:
                raise InvalidFieldError(f"{path}: key {_short(key)} is not a str")
            out[key] = item_dec(x, f"{path}[{_short(key)}]", lenient)
        return out

    return enc, dec


def _dataclass(cls: type) -> tuple[_Encoder, _Decoder]:
    def enc(value: object, path: str) -> object:
        if type(value) is not cls:
            raise InvalidFieldError(f"{path}: expected {cls.__name__}, got {_tname(value)}")
        return _encode_fields(value, path)

    def dec(value: object, path: str, lenient: bool) -> object:
        if type(value) is not dict:
            raise InvalidFieldError(f"{path}: expected map, got {_tname(value)}")
        return _build(cls, value, path, lenient, {})

    return enc, dec


def _converter(annotation: object) -> tuple[_Encoder, _Decoder]:
    if annotation in (int, float, str, bool, bytes):
        return _scalar(typing.cast(type, annotation))
    if annotation is np.ndarray:
        return _tensor()
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _dataclass(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _sequence(_converter(args[0]))
    if origin is collections.abc.Mapping and len(args) == 2 and args[0] is str:
        return _mapping(_converter(args[1]))
    raise TypeError(f"schemas.codec cannot carry a field of type {annotation!r}")


_STR: Final = _scalar(str)
_INT: Final = _scalar(int)
_FLOAT: Final = _scalar(float)
# Message attribute, envelope key, converter.
_ENVELOPE: Final = (
    ("message_id", "id", _STR),
    ("device_id", "device", _STR),
    ("round", "round", _INT),
    ("timestamp", "ts", _FLOAT),
)


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    required: bool
    encode: _Encoder
    decode: _Decoder


_FIELDS_CACHE: dict[type, tuple[_FieldSpec, ...]] = {}
_NAMES_CACHE: dict[type, frozenset[str]] = {}


def _fields(cls: type) -> tuple[_FieldSpec, ...]:
    """The body fields of a dataclass (envelope fields excluded for messages), cached."""
    specs = _FIELDS_CACHE.get(cls)
    if specs is None:
        specs = _FIELDS_CACHE[cls] = _compile_fields(cls)
    return specs


def _compile_fields(cls: type) -> tuple[_FieldSpec, ...]:
    hints = typing.get_type_hints(cls)
    is_message = issubclass(cls, Message)
    specs = []
    for f in dataclasses.fields(cls):
        if is_message and f.name in _MESSAGE_FIELDS:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        enc, dec = _converter(hints[f.name])
        specs.append(_FieldSpec(f.name, required, enc, dec))
    return tuple(specs)


def _field_names(cls: type) -> frozenset[str]:
    names = _NAMES_CACHE.get(cls)
    if names is None:
        names = _NAMES_CACHE[cls] = frozenset(s.name for s in _fields(cls))
    return names


def _encode_fields(obj: object, path: str) -> dict[str, object]:
    return {s.name: s.encode(getattr(obj, s.name), f"{path}.{s.name}") for s in _fields(type(obj))}


def _build(
    cls: type[Any], body: dict[Any, Any], path: str, lenient: bool, envelope: dict[str, object]
) -> Any:
    if not lenient:
        unknown = [k for k in body if k not in _field_names(cls)]
        if unknown:
            names = ", ".join(sorted(_short(k) for k in unknown)[:5])
            raise InvalidFieldError(f"{path}: unknown field(s) {names}")
    kwargs: dict[str, object] = dict(envelope)
    for spec in _fields(cls):
        if spec.name in body:
            kwargs[spec.name] = spec.decode(body[spec.name], f"{path}.{spec.name}", lenient)
        elif spec.required:
            raise InvalidFieldError(f"{path}: missing field {spec.name!r}")
    try:
        return cls(**kwargs)
    except SchemaError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, ArithmeticError) as exc:
        raise InvalidFieldError(f"{path}: {type(exc).__name__}: {exc}") from exc


# --- public API ----------------------------------------------------------------------------------


def encode(message: Message, *, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    """Encodes a message as the msgpack envelope.

    Args:
        message: an instance of one of `MESSAGE_TYPES`.
        max_bytes: the largest encoding allowed: one record's (`MAX_MESSAGE_BYTES`), or a
            whole that will travel as chunks (`schemas.chunks`, up to `MAX_ASSEMBLED_BYTES`).

    Returns:
        The wire bytes, at most `max_bytes` long.

    Raises:
        UnknownMessageTypeError: `message` is not of a registered message type.
        InvalidFieldError: a field does not have the type its annotation declares.
        TensorError: a tensor's dtype, rank or element count is not allowed.
        OversizeError: the encoding is larger than `max_bytes`.
    """
    cls = type(message)
    if _TYPES.get(getattr(cls, "TYPE", None)) is not cls:  # type: ignore[arg-type]
        raise UnknownMessageTypeError(f"{cls.__name__} is not a registered message type")
    name = cls.__name__
    envelope: dict[str, object] = {"v": list(SCHEMA_VERSION), "type": cls.TYPE}
    for attr, key, (enc, _) in _ENVELOPE:
        envelope[key] = enc(getattr(message, attr), f"{name}.{attr}")
    envelope["body"] = _encode_fields(message, name)
    try:
        data: bytes = msgpack.packb(envelope, use_bin_type=True)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidFieldError(f"{name}: cannot encode: {type(exc).__name__}: {exc}") from exc
    if len(data) > max_bytes:
        raise OversizeError(f"{name} encodes to {len(data)} bytes, over {max_bytes}")
    return data


def decode(data: bytes | bytearray | memoryview, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Decodes and validates one message.

    Args:
        data: the wire bytes (bytes, bytearray or memoryview).
        max_bytes: the largest input accepted (a whole reassembled from chunks may be larger
            than one record: `schemas.chunks`).

    Returns:
        The message, validated as its constructor validates it. Tensors are read-only arrays.

    Raises:
        OversizeError: more than `max_bytes`, refused before any decoding.
        MalformedError: not msgpack, trailing bytes, too deep, or not the envelope's shape.
        UnsupportedVersionError: an unknown major schema version.
        UnknownMessageTypeError: an unknown message type.
        InvalidFieldError: a missing, unknown, mistyped or out-of-range field.
        TensorError: a malformed tensor.
    """
    return _decode(data, None, max_bytes)


def decode_as(data: bytes | bytearray | memoryview, cls: type[M]) -> M:
    """Decodes one message that must be of type `cls`.

    Args:
        data: the wire bytes.
        cls: the expected message class.

    Returns:
        The message.

    Raises:
        UnexpectedMessageTypeError: a valid envelope of another message type.
        SchemaError: every other rejection, as `decode`.
    """
    return typing.cast(M, _decode(data, cls, MAX_MESSAGE_BYTES))


def _decode(data: object, expect: type[Message] | None, max_bytes: int) -> Message:
    if isinstance(data, memoryview):
        size = data.nbytes
    elif isinstance(data, bytes | bytearray):
        size = len(data)
    else:
        raise MalformedError(f"expected bytes, got {_tname(data)}")
    if size > max_bytes:
        raise OversizeError(f"message of {size} bytes exceeds {max_bytes}")
    if size == 0:
        raise MalformedError("empty message")
    obj = _unpack(data if isinstance(data, bytes) else bytes(data), max_bytes)
    _check_depth(obj)
    if type(obj) is not dict:
        raise MalformedError(f"message must be a map (the envelope), got {_tname(obj)}")
    lenient = _check_version(obj.get("v"))
    if not lenient:
        unknown = [k for k in obj if k not in _ENVELOPE_KEYS]
        if unknown:
            names = ", ".join(sorted(_short(k) for k in unknown)[:5])
            raise InvalidFieldError(f"envelope: unknown key(s) {names}")
    type_name = obj.get("type")
    if type(type_name) is not str:
        raise MalformedError(f"envelope 'type' must be a str, got {_tname(type_name)}")
    cls = _TYPES.get(type_name)
    if cls is None:
        raise UnknownMessageTypeError(f"unknown message type {_short(type_name)}")
    if expect is not None and cls is not expect:
        raise UnexpectedMessageTypeError(f"expected {expect.TYPE!r}, got {type_name!r}")
    body = obj.get("body")
    if type(body) is not dict:
        raise MalformedError(f"envelope 'body' must be a map, got {_tname(body)}")
    name = cls.__name__
    envelope: dict[str, object] = {}
    for attr, key, (_, dec) in _ENVELOPE:
        if key not in obj:
            raise InvalidFieldError(f"{name}: missing envelope field {key!r}")
        envelope[attr] = dec(obj[key], f"{name}.{attr}", lenient)
    result: Message = _build(cls, body, name, lenient, envelope)
    return result


class _Budget:
    """Counts maps, arrays and map entries while msgpack builds them; refuses duplicate keys."""

    __slots__ = ("containers", "entries")

    def __init__(self) -> None:
        self.containers = MAX_CONTAINERS
        self.entries = MAX_MAP_ENTRIES

    def _spend(self) -> None:
        self.containers -= 1
        if self.containers < 0:
            raise MalformedError(f"more than {MAX_CONTAINERS} maps and arrays in one message")

    def map(self, pairs: list[tuple[object, object]]) -> dict[object, object]:
        self._spend()
        self.entries -= len(pairs)
        if self.entries < 0:
            raise MalformedError(f"more than {MAX_MAP_ENTRIES} map entries in one message")
        result = dict(pairs)
        if len(result) != len(pairs):
            raise MalformedError("duplicate map key")
        return result

    def array(self, items: tuple[object, ...]) -> tuple[object, ...]:
        self._spend()
        return items


def _unpack(data: bytes, max_bytes: int) -> object:
    budget = _Budget()
    try:
        return msgpack.unpackb(
            data,
            object_pairs_hook=budget.map,
            list_hook=budget.array,
            max_bin_len=max_bytes,
            max_ext_len=max_bytes,
            **_UNPACK_OPTIONS,
        )
    except SchemaError:
        raise
    except msgpack.ExtraData as exc:
        raise MalformedError("trailing bytes after the message") from exc
    except msgpack.StackError as exc:
        raise MalformedError(f"nesting deeper than {MAX_DEPTH}") from exc
    except (
        msgpack.UnpackException,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        OverflowError,
        RecursionError,
        BufferError,
    ) as exc:
        detail = str(exc)[:200] or type(exc).__name__
        raise MalformedError(f"not valid msgpack: {detail}") from exc


def _check_depth(obj: object) -> None:
    """Rejects maps/arrays nested deeper than MAX_DEPTH (the envelope map is depth 1)."""
    if not isinstance(obj, dict | tuple):
        return
    stack: list[tuple[dict[object, object] | tuple[object, ...], int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if len(children) > 8 and not _CONTAINER_TYPES & set(map(type, children)):
            continue  # no containers among many scalars: skip them at C speed
        for child in children:
            if type(child) is dict or type(child) is tuple:
                if depth >= MAX_DEPTH:
                    raise MalformedError(f"nesting deeper than {MAX_DEPTH}")
                if child:
                    stack.append((child, depth + 1))


def _check_version(version: object) -> bool:
    """Validates `v`; returns True when the sender's minor is newer (be lenient)."""
    if (
        type(version) is not tuple
        or len(version) != 2
        or any(type(x) is not int or x < 0 for x in version)
    ):
        raise MalformedError(f"envelope 'v' must be [major, minor], got {_short(version)}")
    major, minor = version
    if major != SCHEMA_VERSION[0]:
        raise UnsupportedVersionError(
            f"schema version {major}.{minor} is not supported (this is {SCHEMA_VERSION[0]}.x)"
        )
    return bool(minor > SCHEMA_VERSION[1])
