"""Rewriting a recorded message before it is replayed: fresh ids, timestamps, rounds.

Always through the codec (decode, `dataclasses.replace`, encode), never by patching bytes: the
result is a valid message the gateway checks as any other. A payload that does not decode is
returned untouched (a replay of bad input stays bad input).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

from schemas import decode, encode
from schemas.errors import SchemaError


class IdMap:
    """Fresh message ids, the same fresh id for every copy of one original in one loop (a
    device's resends of an update stay resends of one update)."""

    def __init__(self, make: Callable[[], str] | None = None) -> None:
        self._make = make if make is not None else lambda: f"rp-{uuid.uuid4().hex}"
        self._ids: dict[tuple[int, str], str] = {}

    def fresh(self, original: str, loop: int = 0) -> str:
        """The fresh id of `original` in `loop`."""
        key = (loop, original)
        found = self._ids.get(key)
        if found is None:
            found = self._ids[key] = self._make()
        return found


def rewrite(
    payload: bytes,
    *,
    message_id: str | None = None,
    timestamp: float | None = None,
    round: int | None = None,
) -> bytes:
    """`payload` with the given envelope fields replaced (None: kept)."""
    changes: dict[str, Any] = {}
    if message_id is not None:
        changes["message_id"] = message_id
    if timestamp is not None:
        changes["timestamp"] = timestamp
    if round is not None:
        changes["round"] = round
    if not changes:
        return payload
    try:
        message = decode(payload)
    except SchemaError:
        return payload
    return encode(dataclasses.replace(message, **changes))
