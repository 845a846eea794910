"""Per-device rate limiting at the gateway (pure: the clock is injected).

Every device gets a token bucket (`rate_per_s` tokens a second, at most `burst` held); each MQTT
message from it takes one token, and a message that finds the bucket empty is dropped. Drops are
counted, and of a device's drops only one per `letter_interval_s` becomes a dead letter (a sample
for the operator), so a flooding device cannot flood the dead-letter topic in turn.

Memory: one bucket per device heard from recently; a bucket that has refilled completely is the
same as a new one, so buckets idle for longer than a full refill are forgotten (`prune`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from schemas.limits import CHUNK_BYTES


class Admission(StrEnum):
    """What to do with one message."""

    PASS = "pass"  # within the device's rate
    DROP = "drop"  # over it: drop, count
    DROP_AND_LETTER = "drop-and-letter"  # over it: drop, count, and dead-letter this one


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket's shape.

    Attributes:
        rate_per_s: tokens added per second (the sustained message rate allowed), > 0.
        burst: bucket size (messages allowed at once after a quiet spell), >= 1.
        letter_interval_s: at most one dead letter per device per this many seconds, > 0.
    """

    rate_per_s: float
    burst: float
    letter_interval_s: float = 10.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_per_s) and self.rate_per_s > 0):
            raise ValueError(f"rate_per_s must be finite and > 0, got {self.rate_per_s!r}")
        if not (math.isfinite(self.burst) and self.burst >= 1):
            raise ValueError(f"burst must be finite and >= 1, got {self.burst!r}")
        if not (math.isfinite(self.letter_interval_s) and self.letter_interval_s > 0):
            raise ValueError("letter_interval_s must be finite and > 0")

    @property
    def refill_s(self) -> float:
        """Seconds an empty bucket takes to fill up."""
        return self.burst / self.rate_per_s


class TokenBucket:
    """One device's bucket; starts full.

    Args:
        limit: the bucket's shape.
        now: the clock's reading at creation.
    """

    def __init__(self, limit: RateLimit, now: float) -> None:
        self._limit = limit
        self._tokens = limit.burst
        self._at = now

    @property
    def last_used(self) -> float:
        """When the bucket was last asked."""
        return self._at

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Take `cost` tokens at `now`: True when there were (the message passes)."""
        # A clock that steps back adds nothing (and takes nothing) rather than failing.
        elapsed = max(0.0, now - self._at)
        self._at = max(self._at, now)
        self._tokens = min(self._limit.burst, self._tokens + elapsed * self._limit.rate_per_s)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False


def message_cost(nbytes: int) -> float:
    """Tokens one MQTT message of `nbytes` bytes costs: 1, and one per chunk's worth of bytes
    (`CHUNK_BYTES`) above that. Charged before decoding, from the size alone: a chunked
    update (`schemas.chunks`) costs about one token per chunk, however its sender cut it, so
    neither many tiny chunks nor a few huge messages get past the limit. An update of more
    chunks than the burst is dropped: raise `FEDMOE_GATEWAY_BURST` for parts that large."""
    return max(1.0, nbytes / CHUNK_BYTES)


class DeviceRateLimiter:
    """Token buckets by device id, with dead-letter sampling of the drops.

    Args:
        limit: every device's bucket shape.
        clock: monotonic seconds (injected; `time.monotonic` in the gateway).
    """

    def __init__(self, limit: RateLimit, clock: Callable[[], float]) -> None:
        self._limit = limit
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._last_letter: dict[str, float] = {}
        self._last_prune = clock()
        self.dropped = 0

    def __len__(self) -> int:
        """Devices with a bucket now."""
        return len(self._buckets)

    def admit(self, device: str, cost: float = 1.0) -> Admission:
        """Charge one message of `device`, `cost` tokens (`message_cost`); see `Admission`."""
        now = self._clock()
        if now - self._last_prune > self._limit.refill_s:
            self.prune(now)
        bucket = self._buckets.get(device)
        if bucket is None:
            bucket = self._buckets[device] = TokenBucket(self._limit, now)
        if bucket.take(now, cost):
            return Admission.PASS
        self.dropped += 1
        last = self._last_letter.get(device)
        if last is None or now - last >= self._limit.letter_interval_s:
            self._last_letter[device] = now
            return Admission.DROP_AND_LETTER
        return Admission.DROP

    def prune(self, now: float) -> None:
        """Forget buckets full again by `now` (idle for a whole refill) and old letter marks."""
        horizon = now - self._limit.refill_s
        self._buckets = {d: b for d, b in self._buckets.items() if b.last_used > horizon}
        cutoff = now - self._limit.letter_interval_s
        self._last_letter = {d: t for d, t in self._last_letter.items() if t > cutoff}
        self._last_prune = now
