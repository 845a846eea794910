"""Soak plans: good ones parse into the expected actions and schedule; bad ones are refused
before anything starts, with the event and the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmoe.soak.plan import (
    DropDevices,
    Join,
    Kill,
    Leave,
    Pause,
    PlanError,
    RestartBroker,
    SlowDevices,
    load_plan,
    parse_plan,
)

GOOD = """
events:
  - {at: 10, kill: aggregator}
  - {every: 30, from: 60, until: 120, kill: any}
  - {at: 20, restart: mosquitto}
  - {at: 30, drop_devices: 0.25, for: 5}
  - {at: 40, slow_devices: 0.5, factor: 3, for: 10}
  - {at: 50, join: 4}
  - {at: 55, leave: 2}
  - {at: 70, pause: profiler, for: 3.5}
  - {every: 100, kill: matcher}
"""


def test_every_action_parses() -> None:
    plan = parse_plan(GOOD)
    assert [e.action for e in plan.events] == [
        Kill("aggregator"),
        Kill("any"),
        RestartBroker("mosquitto"),
        DropDevices(0.25, 5.0),
        SlowDevices(0.5, 3.0, 10.0),
        Join(4),
        Leave(2),
        Pause("profiler", 3.5),
        Kill("matcher"),
    ]


def test_schedule_expands_every_from_until_in_time_order() -> None:
    plan = parse_plan(GOOD)
    fired = [(s.t, s.event.index) for s in plan.schedule(250.0)]
    assert fired == [
        (10.0, 1), (20.0, 3), (30.0, 4), (40.0, 5), (50.0, 6), (55.0, 7),
        (60.0, 2), (70.0, 8), (90.0, 2), (100.0, 9), (120.0, 2), (200.0, 9),
    ]  # fmt: skip
    # The run's end cuts the schedule; `every` without `from` starts one period in.
    assert [s.t for s in plan.schedule(95.0) if s.event.index == 2] == [60.0, 90.0]
    assert plan.devices_joining(49.0) == 0
    assert plan.devices_joining(50.0) == 4


def test_shipped_plans_parse() -> None:
    root = Path(__file__).parents[3] / "docker" / "soak"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert {"smoke.yaml", "churn.yaml", "chaos.yaml", "ci.yaml"} <= set(names)
    for path in root.glob("*.yaml"):
        assert load_plan(path).events
    chaos = load_plan(root / "chaos.yaml")
    killed = {e.action.service for e in chaos.events if isinstance(e.action, Kill)}
    assert "any" in killed or {"gateway", "matcher", "aggregator"} <= killed
    assert any(isinstance(e.action, RestartBroker) for e in chaos.events)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "top level must be a mapping"),
        ("events: []", "non-empty list"),
        ("events:\n  - {at: 1, kill: gateway}\nextra: 1", "unknown top-level key(s) extra"),
        ("events:\n  - {kill: gateway}", "event 1: needs exactly one of `at:` or `every:`"),
        ("events:\n  - {at: 1, every: 2, kill: gateway}", "exactly one of `at:` or `every:`"),
        ("events:\n  - {at: 1, from: 3, kill: gateway}", "`from:`/`until:` go with `every:`"),
        ("events:\n  - {at: -1, kill: gateway}", "at: -1 must be >= 0"),
        ("events:\n  - {every: 0, kill: gateway}", "every: 0 must be > 0"),
        ("events:\n  - {every: 10, from: 50, until: 20, kill: any}", "before the first firing"),
        ("events:\n  - {at: 1, kill: postgres}", "kill: 'postgres' is not one of"),
        ("events:\n  - {at: 1}", "needs exactly one action"),
        ("events:\n  - {at: 1, kill: gateway, join: 3}", "found kill, join"),
        ("events:\n  - {at: 1, kill: gateway, colour: red}", "unknown key(s) colour for `kill:`"),
        ("events:\n  - {at: 1, restart: kafka}", "restart: 'kafka' is not one of mosquitto"),
        ("events:\n  - {at: 1, drop_devices: 0.5}", "`drop_devices:` needs for"),
        ("events:\n  - {at: 1, drop_devices: 1.5, for: 3}", "is not a fraction in (0, 1]"),
        ("events:\n  - {at: 1, drop_devices: 0, for: 3}", "drop_devices: 0 must be > 0"),
        ("events:\n  - {at: 1, slow_devices: 0.5, for: 3}", "`slow_devices:` needs factor"),
        ("events:\n  - {at: 1, join: 2.5}", "join: 2.5 must be a whole number"),
        ("events:\n  - {at: 1, leave: true}", "leave: True must be a whole number"),
        ("events:\n  - {at: 1, pause: gateway, for: x}", "for: 'x' is not a number"),
        ("events:\n  - [at, 1]", "event 1: must be a mapping"),
        ("events: [{at: 1, kill: gateway}, {at: 2, kill: nope}]", "event 2: kill: 'nope'"),
        ("events: {{", "not valid YAML"),
    ],
)
def test_bad_plans_are_refused(text: str, message: str) -> None:
    with pytest.raises(PlanError) as info:
        parse_plan(text, source="p.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("p.yaml: ")


def test_a_missing_file_is_a_plan_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="cannot read the plan"):
        load_plan(tmp_path / "nope.yaml")
