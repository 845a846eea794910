"""When each record of a replay is due, and how late it went out (pure; the clock is injected).

Record i of loop l is due at `start + offset(i, l)`, with

    offset(i, l) = (t_i − t_0) / speed + l · period        period = span / speed + gap

(`gap`: the mean gap between records, so loop l + 1 follows loop l as the recording follows
itself). Every due time is computed from the start, never from the previous record, so one
late send does not push the rest (no sleep-per-gap drift). `speed=None` is "as fast as
possible": every record is due at once, in order.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Timeline:
    """Due offsets (s from the replay's start) of recorded arrival times."""

    t0_ns: int
    span_ns: int
    gap_ns: int
    speed: float | None  # None: as fast as possible

    @classmethod
    def of(cls, times_ns: Sequence[int], speed: float | None) -> Timeline:
        """The timeline of `times_ns` (arrival order) at `speed` (> 0, or None for max)."""
        if speed is not None and not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be > 0 (or max), got {speed!r}")
        if not times_ns:
            return cls(0, 0, 0, speed)
        t0, t1 = min(times_ns), max(times_ns)
        gap = (t1 - t0) // (len(times_ns) - 1) if len(times_ns) > 1 else 0
        return cls(t0, t1 - t0, gap, speed)

    def offset(self, t_ns: int, loop: int = 0) -> float:
        """Seconds after the start at which a record of arrival `t_ns` is due in `loop`."""
        if self.speed is None:
            return 0.0
        period = (self.span_ns + self.gap_ns) / 1e9 / self.speed
        return (t_ns - self.t0_ns) / 1e9 / self.speed + loop * period


@dataclass
class Lateness:
    """Schedule error of every send (actual − due, s; ≥ 0 unless the clock is odd)."""

    errors: list[float] = field(default_factory=list)
    sent: int = 0
    first: float | None = None
    last: float | None = None

    def note(self, due: float, actual: float) -> None:
        """One send at `actual` that was due at `due`."""
        self.errors.append(actual - due)
        self.sent += 1
        self.first = actual if self.first is None else self.first
        self.last = actual

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of the errors, s (0 when nothing was sent)."""
        if not self.errors:
            return 0.0
        ordered = sorted(self.errors)
        rank = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
        return ordered[rank]

    def report(self, elapsed_s: float) -> dict[str, float]:
        """p50 / p99 / max error in ms and the achieved rate over `elapsed_s`."""
        return {
            "sent": self.sent,
            "error_p50_ms": round(self.percentile(50) * 1e3, 3),
            "error_p99_ms": round(self.percentile(99) * 1e3, 3),
            "error_max_ms": round(max(self.errors, default=0.0) * 1e3, 3),
            "elapsed_s": round(elapsed_s, 3),
            "rate_per_s": round(self.sent / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        }


async def wait_until(due: float, clock: Clock, sleep: Sleep) -> None:
    """Sleep until `clock() >= due` (one sleep; a second when the sleep woke early)."""
    while True:
        left = due - clock()
        if left <= 0:
            return
        await sleep(left)
