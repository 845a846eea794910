"""Per-service counters: one `ServiceMetrics` per runtime, a snapshot dict, a periodic log line,
and their Prometheus view (`prometheus_registry`), served by `services.runtime.http`.

Besides the outcome counters a runtime keeps latencies (commit, produce), dead letters by
error, consumer lag per partition and the service's own figures, read off what its handler
produces (verdicts by status, rounds opened and closed, profiles, the expert load's CV), so no
service has to count them itself. Nothing here is global: a runtime owns its metrics object
and passes it to what it builds; each registry is its own (never prometheus_client's default).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from schemas.messages import ExpertLoad, ProfileSnapshot, RoundClosed, RoundOpened, UpdateAck

if TYPE_CHECKING:
    from services.handler import Outbound

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
    CHUNKS_HELD = "chunks_held"  # chunks of a large message kept until the rest comes
    CHUNKS_EXPIRED = "chunks_expired"  # incomplete large messages given up (sender gone)
    CHUNKS_STRAY = "chunks_stray"  # chunks of no incomplete whole, not its first: ignored


class Latency(StrEnum):
    """Timed steps, one histogram each (seconds)."""

    COMMIT = "commit"  # one offsets commit
    PRODUCE = "produce"  # one record, from enqueue to Kafka's ack


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Histogram:
    """Cumulative-bucket histogram (Prometheus' shape), pure."""

    bounds: Sequence[float] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        """Count one value in every bucket whose bound it does not exceed."""
        if not self.counts:
            self.counts = [0] * len(self.bounds)
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.n += 1

    def buckets(self) -> list[tuple[str, float]]:
        """(le, cumulative count) pairs, +Inf last."""
        counts = self.counts or [0] * len(self.bounds)
        return [(repr(float(b)), float(c)) for b, c in zip(self.bounds, counts, strict=True)] + [
            ("+Inf", float(self.n))
        ]


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
        self._latency: dict[str, Histogram] = {k.value: Histogram() for k in Latency}
        self._dead_letters: Counter[str] = Counter()  # by error class
        self._produced: Counter[str] = Counter()  # handler outputs by message type
        self._verdicts: Counter[str] = Counter()  # UpdateAck outputs by status
        self._gauges: dict[str, float] = {}
        self._lags: dict[tuple[str, int], int] = {}
        self.polls = 0  # successful polls: the consumer is in its group and fetching
        self.running = False  # the consume loop runs (set and cleared by the runtime)

    def observe(self, latency: Latency, seconds: float) -> None:
        """Time one commit or one produce."""
        self._latency[latency.value].observe(seconds)

    def dead_letter(self, error: str) -> None:
        """Count one dead letter by its error class (plus the DEAD_LETTERED outcome)."""
        self.inc(Outcome.DEAD_LETTERED)
        self._dead_letters[error] += 1

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Records behind the partition's end (after what was handled)."""
        self._lags[(topic, partition)] = max(lag, 0)

    def forget_lags(self, keep: Iterable[tuple[str, int]]) -> None:
        """Drop the lag of partitions no longer owned."""
        wanted = set(keep)
        for key in [k for k in self._lags if k not in wanted]:
            del self._lags[key]

    @property
    def max_lag(self) -> int:
        """The largest partition lag known (0 when none)."""
        return max(self._lags.values(), default=0)

    def outputs(self, outputs: Iterable[Outbound]) -> None:
        """Read the service's own figures off what its handler produced."""
        for out in outputs:
            message = out.message
            self._produced[type(message).__name__] += 1
            if isinstance(message, UpdateAck):
                self._verdicts[message.status] += 1
            elif isinstance(message, RoundOpened):
                self._gauges["round_opened"] = float(message.round)
            elif isinstance(message, RoundClosed):
                self._gauges["round_closed"] = float(message.round)
            elif isinstance(message, ExpertLoad):
                self._gauges["load_cv"] = float(message.cv)
            elif isinstance(message, ProfileSnapshot):
                self._gauges["profile_round"] = float(message.round)

    def ready(self, max_lag: int) -> tuple[bool, str]:
        """Connected (running, polled at least once) and caught up (lag <= max_lag)."""
        if not self.running:
            return False, "not consuming"
        if self.polls == 0:
            return False, "no poll answered yet"
        if self.max_lag > max_lag:
            return False, f"lag {self.max_lag} > {max_lag}"
        return True, "ready"

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


class _Collector:
    """Renders one `ServiceMetrics` for Prometheus at scrape time."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        labels = ["service"]
        records = CounterMetricFamily(
            "fedmoe_records", "records and messages by runtime outcome", labels=[*labels, "outcome"]
        )
        for outcome in Outcome:
            records.add_metric([m.service, outcome.value], m.get(outcome))
        yield records
        yield _counter(
            "fedmoe_dead_letters", "dead letters by error class", m, "error", m._dead_letters
        )
        yield _counter(
            "fedmoe_produced_messages", "handler outputs by message type", m, "type", m._produced
        )
        yield _counter("fedmoe_verdicts", "update verdicts by status", m, "status", m._verdicts)
        yield _counter(
            "fedmoe_service_notes", "the handler's own counters", m, "note", dict(m._notes)
        )
        errors = CounterMetricFamily(
            "fedmoe_handler_errors", "unexpected handler exceptions", labels=labels
        )
        errors.add_metric([m.service], m.get(Outcome.HANDLER_ERRORS))
        yield errors
        for name, hist in m._latency.items():
            family = HistogramMetricFamily(
                f"fedmoe_{name}_latency_seconds", f"{name} latency", labels=labels
            )
            family.add_metric([m.service], hist.buckets(), hist.total)
            yield family
        lag = GaugeMetricFamily(
            "fedmoe_consumer_lag", "records behind the end, per partition",
            labels=[*labels, "topic", "partition"],
        )  # fmt: skip
        for (topic, partition), value in sorted(m._lags.items()):
            lag.add_metric([m.service, topic, str(partition)], value)
        yield lag
        for gauge_name, gauge_value in sorted(m._gauges.items()):
            gauge = GaugeMetricFamily(f"fedmoe_{gauge_name}", f"latest {gauge_name}", labels=labels)
            gauge.add_metric([m.service], gauge_value)
            yield gauge
        up = GaugeMetricFamily("fedmoe_uptime_seconds", "seconds since start", labels=labels)
        up.add_metric([m.service], time.monotonic() - m._started)
        yield up


def _counter(
    name: str, doc: str, m: ServiceMetrics, label: str, values: Mapping[str, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["service", label])
    for key, count in sorted(values.items()):
        family.add_metric([m.service, str(key)], count)
    return family


def prometheus_registry(metrics: ServiceMetrics) -> CollectorRegistry:
    """A registry of its own with `metrics` and the process's figures (RSS, CPU, fds)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(metrics))
    ProcessCollector(registry=registry)
    return registry


async def log_periodically(metrics: ServiceMetrics, interval_s: float, stop: asyncio.Event) -> None:
    """Log `metrics.log_line()` every `interval_s` until `stop` is set, then once more."""
    while not stop.is_set():
        try:
            async with asyncio.timeout(interval_s):
                await stop.wait()
        except TimeoutError:
            log.info("%s", metrics.log_line())
    log.info("%s", metrics.log_line())
