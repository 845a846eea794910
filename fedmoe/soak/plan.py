"""The soak plan: a YAML file whose `events:` list says what to do when (pure).

    events:
      - at: 60                    # seconds from the start
        kill: aggregator          # SIGKILL one process of a service (or `any` service)
      - every: 30                 # at from, from + 30, ... (from defaults to one period in)
        from: 90
        until: 600
        kill: any
      - at: 120
        restart: mosquitto        # stop and start the MQTT broker
      - at: 200
        drop_devices: 0.3         # that share of the online devices loses its link ...
        for: 20                   # ... for 20 s, then reconnects
      - at: 260
        slow_devices: 0.2
        factor: 3                 # their round time × 3, for 60 s
        for: 60
      - {at: 300, join: 20}       # devices enter the fleet for good
      - {at: 400, leave: 10}      # devices leave it for good
      - {at: 100, pause: profiler, for: 10}   # SIGSTOP, then SIGCONT: a stalled consumer

Every key is checked before anything starts: unknown keys, a missing or second action, bad
values and names are refused with `PlanError`, naming the event (1-based) and the key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedmoe.errors import SettingsError

SERVICES = ("gateway", "profiler", "load-monitor", "evaluator", "aggregator", "matcher")
ANY = "any"
BROKERS = ("mosquitto",)
_TIMING_KEYS = {"at", "every", "from", "until"}


class PlanError(SettingsError):
    """A soak plan that cannot be run as written (not retriable: fix the plan)."""


@dataclass(frozen=True)
class Kill:
    """SIGKILL one process of `service` (`any`: a random service)."""

    service: str


@dataclass(frozen=True)
class RestartBroker:
    """Stop the broker and start it again on the same port and data."""

    broker: str


@dataclass(frozen=True)
class DropDevices:
    """`fraction` of the online devices lose their link for `for_s` seconds."""

    fraction: float
    for_s: float


@dataclass(frozen=True)
class SlowDevices:
    """`fraction` of the online devices take `factor` × their round time for `for_s`."""

    fraction: float
    factor: float
    for_s: float


@dataclass(frozen=True)
class Join:
    """`count` new devices enter the fleet for good."""

    count: int


@dataclass(frozen=True)
class Leave:
    """`count` devices leave the fleet for good."""

    count: int


@dataclass(frozen=True)
class Pause:
    """SIGSTOP one process of `service` for `for_s` seconds, then SIGCONT."""

    service: str
    for_s: float


Action = Kill | RestartBroker | DropDevices | SlowDevices | Join | Leave | Pause


@dataclass(frozen=True)
class Timing:
    """Once `at`, or `every` seconds from `from_s` up to `until_s` (None: the run's end)."""

    at: float | None = None
    every: float | None = None
    from_s: float | None = None
    until_s: float | None = None

    def times(self, duration_s: float) -> list[float]:
        """Seconds from the start at which the event fires within a run of `duration_s`."""
        if self.at is not None:
            return [self.at] if self.at <= duration_s else []
        assert self.every is not None
        first = self.from_s if self.from_s is not None else self.every
        last = min(self.until_s if self.until_s is not None else duration_s, duration_s)
        out: list[float] = []
        k = 0
        while (t := first + k * self.every) <= last + 1e-9:
            out.append(round(t, 6))
            k += 1
        return out


@dataclass(frozen=True)
class PlanEvent:
    """One entry of the plan: when, and what."""

    index: int  # 1-based position in the file
    timing: Timing
    action: Action


@dataclass(frozen=True)
class Scheduled:
    """One firing of a plan event."""

    t: float
    event: PlanEvent


@dataclass(frozen=True)
class Plan:
    """A validated plan."""

    events: tuple[PlanEvent, ...]

    def schedule(self, duration_s: float) -> list[Scheduled]:
        """Every firing within `duration_s`, in time order (file order on ties)."""
        fired = [Scheduled(t, e) for e in self.events for t in e.timing.times(duration_s)]
        return sorted(fired, key=lambda s: (s.t, s.event.index))

    def devices_joining(self, duration_s: float) -> int:
        """Devices that join within `duration_s`."""
        actions = [s.event.action for s in self.schedule(duration_s)]
        return sum(a.count for a in actions if isinstance(a, Join))


def _number(where: str, key: str, value: Any, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PlanError(f"{where}: {key}: {value!r} is not a number")
    if positive and not value > 0:
        raise PlanError(f"{where}: {key}: {value!r} must be > 0")
    if not positive and value < 0:
        raise PlanError(f"{where}: {key}: {value!r} must be >= 0")
    return float(value)


def _count(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"{where}: {key}: {value!r} must be a whole number >= 1")
    return value


def _fraction(where: str, key: str, value: Any) -> float:
    x = _number(where, key, value)
    if x > 1:
        raise PlanError(f"{where}: {key}: {value!r} is not a fraction in (0, 1]")
    return x


def _service(where: str, key: str, value: Any, *, allow_any: bool) -> str:
    names = (*SERVICES, ANY) if allow_any else SERVICES
    if value not in names:
        raise PlanError(f"{where}: {key}: {value!r} is not one of {', '.join(names)}")
    return str(value)


def _timing(where: str, entry: dict[str, Any]) -> Timing:
    if ("at" in entry) == ("every" in entry):
        raise PlanError(f"{where}: needs exactly one of `at:` or `every:`")
    if "at" in entry:
        if "from" in entry or "until" in entry:
            raise PlanError(f"{where}: `from:`/`until:` go with `every:`, not `at:`")
        return Timing(at=_number(where, "at", entry["at"], positive=False))
    every = _number(where, "every", entry["every"])
    from_s = _number(where, "from", entry["from"], positive=False) if "from" in entry else None
    until_s = _number(where, "until", entry["until"], positive=False) if "until" in entry else None
    if until_s is not None and until_s < (from_s if from_s is not None else every):
        raise PlanError(f"{where}: `until:` {until_s} is before the first firing")
    return Timing(every=every, from_s=from_s, until_s=until_s)


def _action(where: str, entry: dict[str, Any]) -> Action:
    actions = [k for k in entry if k in _ACTIONS]
    if len(actions) != 1:
        found = ", ".join(actions) if actions else "none"
        raise PlanError(
            f"{where}: needs exactly one action of {', '.join(_ACTIONS)} (found {found})"
        )
    name = actions[0]
    extra, build = _ACTIONS[name]
    allowed = {name, *extra, *_TIMING_KEYS}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise PlanError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} for `{name}:`")
    missing = sorted(k for k in extra if k not in entry)
    if missing:
        raise PlanError(f"{where}: `{name}:` needs {', '.join(missing)}")
    action: Action = build(where, entry)
    return action


def _restart(where: str, e: dict[str, Any]) -> RestartBroker:
    if e["restart"] not in BROKERS:
        raise PlanError(
            f"{where}: restart: {e['restart']!r} is not one of {', '.join(BROKERS)} (the local "
            "Kafka broker keeps nothing across a restart, so it is not restarted)"
        )
    return RestartBroker(str(e["restart"]))


# action key -> (the other keys it needs, builder)
_ACTIONS: dict[str, tuple[tuple[str, ...], Callable[[str, dict[str, Any]], Action]]] = {
    "kill": ((), lambda w, e: Kill(_service(w, "kill", e["kill"], allow_any=True))),
    "restart": ((), _restart),
    "drop_devices": (
        ("for",),
        lambda w, e: DropDevices(
            _fraction(w, "drop_devices", e["drop_devices"]), _number(w, "for", e["for"])
        ),
    ),
    "slow_devices": (
        ("factor", "for"),
        lambda w, e: SlowDevices(
            _fraction(w, "slow_devices", e["slow_devices"]),
            _number(w, "factor", e["factor"]),
            _number(w, "for", e["for"]),
        ),
    ),
    "join": ((), lambda w, e: Join(_count(w, "join", e["join"]))),
    "leave": ((), lambda w, e: Leave(_count(w, "leave", e["leave"]))),
    "pause": (
        ("for",),
        lambda w, e: Pause(
            _service(w, "pause", e["pause"], allow_any=True), _number(w, "for", e["for"])
        ),
    ),
}


def parse_plan(text: str, *, source: str = "plan") -> Plan:
    """Parse and validate a plan's YAML text; `PlanError` says what is wrong and where."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlanError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PlanError(f"{source}: the top level must be a mapping with `events:`")
    unknown = sorted(set(map(str, data)) - {"events"})
    if unknown:
        raise PlanError(f"{source}: unknown top-level key(s) {', '.join(unknown)}")
    entries = data.get("events")
    if not isinstance(entries, list) or not entries:
        raise PlanError(f"{source}: `events:` must be a non-empty list")
    events = []
    for i, entry in enumerate(entries, start=1):
        where = f"{source}: event {i}"
        if not isinstance(entry, dict) or not all(isinstance(k, str) for k in entry):
            raise PlanError(f"{where}: must be a mapping of keys to values")
        action = _action(where, entry)
        events.append(PlanEvent(i, _timing(where, entry), action))
    return Plan(tuple(events))


def load_plan(path: Path) -> Plan:
    """Read and validate the plan at `path`."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlanError(f"{path}: cannot read the plan: {exc}") from exc
    return parse_plan(text, source=str(path))
