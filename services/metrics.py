"""Per-service counters: one `ServiceMetrics` per runtime, a snapshot dict, a periodic log line.

Nothing here is global: a runtime owns its metrics object and passes it to what it builds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from enum import StrEnum

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    """What can happen to a record (or an MQTT message), one counter each."""

    RECEIVED = "received"  # records (or MQTT messages) taken in
    HANDLED = "handled"  # handler returned normally
    DEAD_LETTERED = "dead_lettered"  # sent to the dead-letter topic
    RETRIED = "retried"  # one retry of a handler call, a send or a commit
    PRODUCED = "produced"  # records acknowledged by Kafka
    COMMITTED = "committed"  # offsets commits that succeeded
    COMMIT_FAILED = "commit_failed"  # commits lost to a rebalance (work is redone)
    DROPPED_STALE = "dropped_stale"  # fetched records dropped because a rebalance intervened
    REBALANCES = "rebalances"  # partition revocations seen
    TICKS = "ticks"  # on_tick calls
    TICK_ERRORS = "tick_errors"  # on_tick calls that raised
    HANDLER_ERRORS = "handler_errors"  # unexpected exceptions from a handler (bugs)
    PUBLISHED = "published"  # MQTT publishes completed (gateway egress)
    PUBACKED = "pubacked"  # MQTT PUBACKs sent after Kafka acknowledged (gateway ingress)
    SKIPPED = "skipped"  # valid records a handler has nothing to do with (not dead letters)


class ServiceMetrics:
    """Counters per `Outcome` for one service process.

    Args:
        service: the service's name, in every snapshot.
        notes: the handler's own counters (what its domain logic noted), shown beside the
            runtime's in the same snapshot; read live, never copied.
    """

    def __init__(self, service: str, notes: Mapping[str, int] | None = None) -> None:
        self.service = service
        self._counts: Counter[str] = Counter()
        self._notes: Mapping[str, int] = notes if notes is not None else {}
        self._started = time.monotonic()

    def inc(self, outcome: Outcome, n: int = 1) -> None:
        """Add `n` to one counter."""
        self._counts[outcome.value] += n

    def get(self, outcome: Outcome) -> int:
        """One counter's value."""
        return self._counts[outcome.value]

    def snapshot(self) -> dict[str, int | float | str]:
        """Every counter (zeros included), the handler's notes, the service name and its
        uptime in seconds."""
        out: dict[str, int | float | str] = {"service": self.service}
        out.update({o.value: self._counts[o.value] for o in Outcome})
        out.update({str(note): count for note, count in sorted(self._notes.items())})
        out["uptime_s"] = round(time.monotonic() - self._started, 3)
        return out

    def log_line(self) -> str:
        """The snapshot as one `metrics {...}` log line (JSON, easy to grep and parse)."""
        return "metrics " + json.dumps(self.snapshot(), sort_keys=True)


async def log_periodically(metrics: ServiceMetrics, interval_s: float, stop: asyncio.Event) -> None:
    """Log `metrics.log_line()` every `interval_s` until `stop` is set, then once more."""
    while not stop.is_set():
        try:
            async with asyncio.timeout(interval_s):
                await stop.wait()
        except TimeoutError:
            log.info("%s", metrics.log_line())
    log.info("%s", metrics.log_line())
