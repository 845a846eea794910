"""`FleetSettings`, `fedmoe fleet`'s flags and exit codes, and the fleet's counters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.fleet import write_stats
from clients.inbound import DropReason
from clients.settings import FleetSettings
from clients.stats import DeviceStats, Event, Received, totals
from fedmoe.cli import main
from fedmoe.errors import SettingsError
from fedmoe.settings import load_settings


def test_defaults_and_env() -> None:
    settings = load_settings(
        FleetSettings,
        {"FEDMOE_FLEET_FIRST": "4", "FEDMOE_FLEET_COUNT": "2", "FEDMOE_FLEET_DROP_PROB": "0.1"},
    )
    assert (settings.first, settings.count, settings.drop_prob) == (4, 2, 0.1)
    assert settings.device_range(10) == range(4, 6)
    assert FleetSettings().device_range(7) == range(0, 7)
    assert FleetSettings(first=3).device_range(7) == range(3, 7)


@pytest.mark.parametrize(
    "bad",
    [
        {"first": -1},
        {"drop_prob": 1.5},
        {"resend_s": 0.0},
        {"model_wait_s": -1.0},
        {"max_resends": -1},
        {"reconnect_s": -0.5},
        {"drain_s": -1.0},
        {"client_prefix": "a/b"},
        {"stop_after_round": -2},
        {"keepalive_s": 0},
    ],
)
def test_bad_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(SettingsError):
        FleetSettings(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("first", "count"), [(5, 3), (7, 0), (0, 8)])
def test_a_range_outside_the_scenario_is_refused(first: int, count: int) -> None:
    with pytest.raises(SettingsError, match="FEDMOE_FLEET_FIRST/COUNT"):
        FleetSettings(first=first, count=count).device_range(7)


def test_fleet_command_help_names_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fleet", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in ("--first", "--count", "--stats-file", "FEDMOE_FLEET_DROP_PROB", "--mqtt-url"):
        assert text in out
    assert "FEDMOE_SCENARIO_TIME_SCALE" in out


@pytest.mark.parametrize(
    "argv",
    [["--drop-prob", "2"], ["--first", "40", "--devices", "30"], ["--resend-s", "soon"]],
)
def test_fleet_command_refuses_bad_settings(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fleet", *argv]) == 2
    assert "fedmoe fleet:" in capsys.readouterr().err


def test_totals_sum_every_device() -> None:
    a, b = DeviceStats(), DeviceStats()
    a.sent.update({("u1", "shared"), ("u1", "expert-0")})
    a.applied.add(("u1", "shared"))
    a.acks.update({"applied": 1, "late": 1})
    a.resends, a.rounds_trained, a.drops = 2, 1, 1
    a.count(Event.TELEMETRY_SENT, 3)
    b.sent.add(("u2", "shared"))
    b.applied.add(("u2", "shared"))
    b.acks.update({"applied": 1, "duplicate": 1})
    b.rounds_trained = 1
    b.dropped(DropReason.LAYOUT)
    a.assignment_lags.add(0.2)
    b.assignment_lags.add(0.4)
    b.assignment_lags.add(0.3)
    a.received(Received.MODEL, 1000)
    b.received(Received.MODEL, 500)
    b.received(Received.CONTROL, 20)
    t = totals([a, b])
    assert t["devices"] == 2
    assert (t["updates_sent"], t["updates_acked"], t["resends"]) == (3, 2, 2)
    assert (t["rounds_trained"], t["drops"]) == (2, 1)
    assert t["acks"] == {"applied": 2, "duplicate": 1, "late": 1}
    assert t["events"]["telemetry_sent"] == 3
    assert t["dropped_inputs"]["layout"] == 1
    assert t["assignment_lag_s"] == {"n": 3, "mean": pytest.approx(0.3), "max": 0.4}
    assert t["bytes_received"] == {"model": 1500, "round": 0, "control": 20, "dropped": 0}
    assert a.as_dict()["updates_sent"] == 2
    assert DeviceStats().as_dict()["assignment_lag_s"] == {"n": 0, "mean": 0.0, "max": 0.0}


def test_stats_file_is_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "out" / "fleet.json"
    write_stats(path, {"totals": {"updates_sent": 3}})
    write_stats(path, {"totals": {"updates_sent": 4}})
    assert json.loads(path.read_text()) == {"totals": {"updates_sent": 4}}
    assert [p.name for p in path.parent.iterdir()] == ["fleet.json"]
