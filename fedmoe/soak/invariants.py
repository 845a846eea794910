"""The soak's invariants, each a pure fold over the event stream (`events`), judged live.

Each `Checker` takes every event (`feed`), is asked to judge what is due (`check(now)`, called
every few seconds while the run goes on) and, at the end, everything that can still be judged
(`finish`). A violation is recorded with its time and evidence; nothing stops the run.
`checked` counts judgments (a part, an update, a round, a sample), `violated` the failed ones.

- `applied_exactly_once`: a closed part's applied count equals the devices with an "applied"
  verdict for it, a part republished keeps its count, and no device has two different
  updates applied to one part of one round;
- `acked_subset_applied`: every update part a device saw acknowledged "applied" has that
  verdict on Kafka (and so is in the count above);
- `applied_subset_sent`: every "applied" verdict is of an update part a device sent;
- `round_within_deadline`: no round stays open past its deadline + `round_bound_s`;
- `rounds_progress`: while at least one device is online, a round closes at least every
  `stall_s`;
- `consumer_lag_bounded`: no process's lag stays above `max_lag` for longer than `lag_for_s`;
- `rss_bounded`: each service's RSS slope (after warm-up, `memory.rss_slope`, over the
  incarnations that each lived `rss_min_span_s` past their warm-up) is at most
  `rss_mb_per_hour`; a service none of whose incarnations lived that long is not judged;
- `mqtt_no_drops`: Mosquitto's dropped-messages counter stays 0.
"""

from __future__ import annotations

import abc
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from fedmoe.soak.events import (
    DeviceAcked,
    Dropped,
    LagSample,
    Online,
    PartClosedSeen,
    RoundClosedSeen,
    RoundOpenedSeen,
    RssSample,
    Sent,
    SoakEvent,
    UpdateKey,
    Verdict,
)
from fedmoe.soak.memory import SlopeFit, rss_slope


@dataclass(frozen=True)
class Violation:
    """One failed judgment."""

    t: float
    invariant: str
    evidence: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"t": round(self.t, 1), "invariant": self.invariant, "evidence": self.evidence}


@dataclass(frozen=True)
class Bounds:
    """The limits the checkers judge by (seconds are wall seconds)."""

    settle_s: float = 60.0  # how long evidence may trail what it proves (topics, journals)
    round_bound_s: float = 60.0
    stall_s: float = 180.0
    max_lag: int = 5000
    lag_for_s: float = 60.0
    rss_warmup_s: float = 120.0
    rss_min_span_s: float = 300.0
    rss_mb_per_hour: float = 200.0
    rss_judge_every_s: float = 60.0


class Checker(abc.ABC):
    """One invariant."""

    name: str

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self.checked = 0
        self.violations: list[Violation] = []

    def feed(self, event: SoakEvent) -> None:  # noqa: B027 - most take only some events
        """Take one event in."""

    def check(self, now: float) -> None:  # noqa: B027 - some judge only in feed
        """Judge what is due at `now`."""

    def finish(self, now: float) -> None:
        """At the end: judge what can still be judged."""
        self.check(now)

    def _judge(self, ok: bool, t: float, **evidence: Any) -> None:
        self.checked += 1
        if not ok:
            self.violations.append(Violation(t, self.name, evidence))


class AppliedExactlyOnce(Checker):
    name = "applied_exactly_once"

    def __init__(self, bounds: Bounds) -> None:
        super().__init__(bounds)
        self.applied: dict[tuple[int, str, str], str] = {}  # (round, part, device) -> update
        self.devices: dict[tuple[int, str], int] = defaultdict(int)  # applied per (round, part)
        self.closed: dict[tuple[int, str], tuple[int, float]] = {}  # -> (applied, seen at)
        self.judged: set[tuple[int, str]] = set()
        self._counted: set[tuple[int, str, str]] = set()

    def feed(self, event: SoakEvent) -> None:
        if isinstance(event, Verdict) and event.status == "applied":
            uid, part = event.key
            slot = (event.round, part, event.device)
            first = self.applied.setdefault(slot, uid)
            if first == uid and slot not in self._counted:
                self._counted.add(slot)
                self.devices[(event.round, part)] += 1
            if first != uid:
                self._judge(
                    False, event.t, round=event.round, part=part, device=event.device,
                    updates=[first, uid], why="two updates of one device applied to one part",
                )  # fmt: skip
        elif isinstance(event, PartClosedSeen):
            key = (event.round, event.part)
            before = self.closed.get(key)
            if before is None:
                self.closed[key] = (event.applied, event.t)
            elif before[0] != event.applied:
                self._judge(
                    False, event.t, round=event.round, part=event.part,
                    applied=[before[0], event.applied], why="part republished with another count",
                )  # fmt: skip

    def check(self, now: float, *, all_due: bool = False) -> None:
        due = [
            k
            for k, (_, seen) in self.closed.items()
            if k not in self.judged and (all_due or seen <= now - self.bounds.settle_s)
        ]
        counts = self.devices
        for key in due:
            self.judged.add(key)
            applied = self.closed[key][0]
            self._judge(
                applied == counts[key], now, round=key[0], part=key[1], closed_applied=applied,
                applied_verdicts=counts[key], why="applied count != devices acked applied",
            )  # fmt: skip

    def finish(self, now: float) -> None:
        self.check(now, all_due=True)


class _Pending(Checker):
    """Keys that must be matched by other evidence within `settle_s`."""

    def __init__(self, bounds: Bounds) -> None:
        super().__init__(bounds)
        self.pending: dict[UpdateKey, float] = {}
        self.seen: set[UpdateKey] = set()
        self.judged: set[UpdateKey] = set()

    def _expect(self, key: UpdateKey, t: float) -> None:
        if key not in self.judged:
            self.pending.setdefault(key, t)

    def check(self, now: float, *, all_due: bool = False) -> None:
        for key, t in list(self.pending.items()):
            if key in self.seen:
                del self.pending[key]
                self.judged.add(key)
                self._judge(True, now)
            elif all_due or t <= now - self.bounds.settle_s:
                del self.pending[key]
                self.judged.add(key)
                self._judge(False, now, update=key[0], part=key[1], since=round(t, 1))

    def finish(self, now: float) -> None:
        self.check(now, all_due=True)


class AckedSubsetApplied(_Pending):
    name = "acked_subset_applied"

    def feed(self, event: SoakEvent) -> None:
        if isinstance(event, DeviceAcked):
            self._expect(event.key, event.t)
        elif isinstance(event, Verdict) and event.status == "applied":
            self.seen.add(event.key)


class AppliedSubsetSent(_Pending):
    name = "applied_subset_sent"

    def feed(self, event: SoakEvent) -> None:
        if isinstance(event, Verdict) and event.status == "applied":
            self._expect(event.key, event.t)
        elif isinstance(event, Sent):
            self.seen.add(event.key)


class RoundWithinDeadline(Checker):
    name = "round_within_deadline"

    def __init__(self, bounds: Bounds) -> None:
        super().__init__(bounds)
        self.open: dict[int, float] = {}  # round -> deadline t
        self.flagged: set[int] = set()
        self.closed: set[int] = set()
        self.durations: list[tuple[float, int, float]] = []  # (closed at, round, seconds open)
        self._opened_at: dict[int, float] = {}

    def feed(self, event: SoakEvent) -> None:
        if isinstance(event, RoundOpenedSeen) and event.round not in self.closed:
            self.open.setdefault(event.round, event.deadline_t)
            self._opened_at.setdefault(event.round, event.t)
        elif isinstance(event, RoundClosedSeen) and event.round not in self.closed:
            self.closed.add(event.round)
            deadline = self.open.pop(event.round, None)
            if event.round in self._opened_at:
                opened = self._opened_at.pop(event.round)
                self.durations.append((event.t, event.round, event.t - opened))
            if deadline is None or event.round in self.flagged:
                return
            late = event.t - deadline
            self._judge(
                late <= self.bounds.round_bound_s, event.t, round=event.round,
                closed_after_deadline_s=round(late, 1),
            )  # fmt: skip

    def check(self, now: float) -> None:
        for round_, deadline in self.open.items():
            if round_ not in self.flagged and now - deadline > self.bounds.round_bound_s:
                self.flagged.add(round_)
                self._judge(False, now, round=round_, open_after_deadline_s=round(now - deadline))


class RoundsProgress(Checker):
    name = "rounds_progress"

    def __init__(self, bounds: Bounds) -> None:
        super().__init__(bounds)
        self.last_close = 0.0
        self.online = 0
        self.stalled = False

    def feed(self, event: SoakEvent) -> None:
        if isinstance(event, RoundClosedSeen):
            self.last_close = max(self.last_close, event.t)
            self.stalled = False
        elif isinstance(event, Online):
            self.online = event.devices

    def check(self, now: float) -> None:
        if self.online < 1 or self.stalled:
            return
        quiet = now - self.last_close
        ok = quiet <= self.bounds.stall_s
        self.stalled = not ok
        self._judge(ok, now, no_round_closed_for_s=round(quiet), devices_online=self.online)

    def finish(self, now: float) -> None:
        pass  # the shutdown itself stops rounds: nothing to judge then


class ConsumerLagBounded(Checker):
    name = "consumer_lag_bounded"

    def __init__(self, bounds: Bounds) -> None:
        super().__init__(bounds)
        self.above_since: dict[str, float] = {}
        self.flagged: set[str] = set()
        self.peaks: dict[str, int] = {}

    def feed(self, event: SoakEvent) -> None:
        if not isinstance(event, LagSample):
            return
        proc = event.process
        self.peaks[event.service] = max(self.peaks.get(event.service, 0), event.lag)
        if event.lag <= self.bounds.max_lag:
            self.above_since.pop(proc, None)
            self.flagged.discard(proc)
            self._judge(True, event.t)
            return
        since = self.above_since.setdefault(proc, event.t)
        if proc in self.flagged:
            return
        if event.t - since > self.bounds.lag_for_s:
            self.flagged.add(proc)
            self._judge(
                False, event.t, process=proc, lag=event.lag, above_for_s=round(event.t - since)
            )
        else:
            self._judge(True, event.t)


class RssBounded(Checker):
    name = "rss_bounded"

    def __init__(self, bounds: Bounds) -> None:
        super().__init__(bounds)
        self.samples: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
        self.flagged: set[str] = set()
        self._last_judged = 0.0

    def feed(self, event: SoakEvent) -> None:
        if isinstance(event, RssSample):
            self.samples[event.service].append((event.pid, event.t, event.mb))

    def fits(self) -> dict[str, SlopeFit]:
        """The slope per service now."""
        b = self.bounds
        return {
            s: rss_slope(v, b.rss_warmup_s, b.rss_min_span_s)
            for s, v in sorted(self.samples.items())
        }

    def check(self, now: float, *, force: bool = False) -> None:
        if not force and now - self._last_judged < self.bounds.rss_judge_every_s:
            return
        self._last_judged = now
        for service, fit in self.fits().items():
            if service in self.flagged or not fit.samples:
                continue
            ok = fit.mb_per_hour <= self.bounds.rss_mb_per_hour
            if not ok:
                self.flagged.add(service)
            self._judge(ok, now, service=service, **fit.as_dict())

    def finish(self, now: float) -> None:
        self.check(now, force=True)


class MqttNoDrops(Checker):
    name = "mqtt_no_drops"

    def __init__(self, bounds: Bounds) -> None:
        super().__init__(bounds)
        self.last = 0

    def feed(self, event: SoakEvent) -> None:
        if isinstance(event, Dropped):
            grew = event.count > 0 and event.count != self.last
            self.last = event.count
            self._judge(not grew, event.t, dropped=event.count)


@dataclass
class Invariants:
    """Every checker, fed the same stream."""

    bounds: Bounds = field(default_factory=Bounds)
    checkers: list[Checker] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.checkers:
            self.checkers = [
                cls(self.bounds)
                for cls in (
                    AppliedExactlyOnce, AckedSubsetApplied, AppliedSubsetSent,
                    RoundWithinDeadline, RoundsProgress, ConsumerLagBounded, RssBounded,
                    MqttNoDrops,
                )
            ]  # fmt: skip

    def __getitem__(self, name: str) -> Checker:
        return next(c for c in self.checkers if c.name == name)

    def feed(self, event: SoakEvent) -> None:
        for checker in self.checkers:
            checker.feed(event)

    def check(self, now: float) -> None:
        for checker in self.checkers:
            checker.check(now)

    def finish(self, now: float) -> None:
        for checker in self.checkers:
            checker.finish(now)

    @property
    def violations(self) -> list[Violation]:
        """Every violation so far, in time order."""
        return sorted((v for c in self.checkers for v in c.violations), key=lambda v: v.t)

    def summary(self) -> dict[str, dict[str, int]]:
        """{invariant: {checked, violated}}."""
        return {
            c.name: {"checked": c.checked, "violated": len(c.violations)} for c in self.checkers
        }
