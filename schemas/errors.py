"""Errors of the wire contract. Every rejection by `schemas.decode` is a `SchemaError`."""

from __future__ import annotations

from fedmoe.errors import FedMoEError


class SchemaError(FedMoEError):
    """Bytes or fields that break the wire contract (never retriable: the input is bad)."""


class OversizeError(SchemaError):
    """The input is larger than the limit; refused before any decoding work."""


class MalformedError(SchemaError):
    """Not valid msgpack, or not the envelope's shape."""


class UnsupportedVersionError(SchemaError):
    """The envelope's schema major version is unknown."""


class UnknownMessageTypeError(SchemaError):
    """The envelope names a message type this version does not know."""


class InvalidFieldError(SchemaError):
    """A field is missing, of the wrong type, or out of range."""


class TensorError(SchemaError):
    """A tensor ExtType is malformed: dtype not allowed, bad shape, length mismatch."""


class UnexpectedMessageTypeError(SchemaError):
    """A valid message of another type than the one asked for (`schemas.decode_as`)."""
