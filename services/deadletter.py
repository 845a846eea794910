"""Building `DeadLetter` messages (pure): what was rejected, from where, and why."""

from __future__ import annotations

from schemas.limits import MAX_DEAD_LETTER_ORIGINAL, MAX_ID_CHARS, MAX_REASON_CHARS
from schemas.messages import DeadLetter
from schemas.topics import valid_segment

MAX_DEAD_LETTER_REASON = 4 * MAX_REASON_CHARS


def _printable_id(text: str) -> str:
    clean = "".join(ch if ch.isascii() and ch.isprintable() else "?" for ch in text)
    return clean[:MAX_ID_CHARS] or "?"


def dead_letter(
    *,
    source: str,
    reason: str,
    error: str,
    original: bytes,
    message_id: str,
    device_id: str | None,
    service: str,
    round_: int = 0,
    now: float,
) -> DeadLetter:
    """A `DeadLetter` for one rejected input.

    `message_id` should be deterministic for the input (e.g. `topic/partition/offset`) so a
    redelivered rejection is recognisable; `device_id` falls back to `service` when the input's
    device is unknown or not a valid id. The original bytes are capped at
    `MAX_DEAD_LETTER_ORIGINAL`; `original_size` keeps the real size.
    """
    device = device_id if device_id is not None and valid_segment(device_id) else service
    return DeadLetter(
        message_id=_printable_id(message_id),
        device_id=device if valid_segment(device) else "service",
        round=round_ if 0 <= round_ < 2**31 else 0,
        timestamp=max(0.0, now),
        source=source[:MAX_DEAD_LETTER_REASON],
        reason=reason[:MAX_DEAD_LETTER_REASON],
        error=error[:MAX_ID_CHARS],
        original=bytes(original[:MAX_DEAD_LETTER_ORIGINAL]),
        original_size=len(original),
    )
