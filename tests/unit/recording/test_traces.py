"""FedScale import and fleet traces: schema checks, the records a trace makes, the traced world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recording.errors import RecordingError
from recording.fedscale import (
    FedScaleClient,
    device_name,
    load_fedscale,
    parse_fedscale,
    to_records,
)
from recording.trace import FleetTrace
from schemas import decode
from schemas.messages import DeviceStatus, Telemetry
from tests.unit.recording.helpers import mqtt, telemetry

EXAMPLE = Path(__file__).parents[3] / "recording" / "examples" / "fedscale-small.json"


def _trace() -> dict[str, object]:
    return {
        "client_device_capacity": {
            "1": {"computation": 3.0, "communication": 5000.0},
            "2": {"computation": 9.0, "communication": 800.0},
        },
        "client_behave_trace": {
            "1": {"duration": 100.0, "active": [0.0, 50.0], "inactive": [20.0, 70.0]},
            "2": {"duration": 100.0, "active": [10.0], "inactive": [90.0]},
        },
    }


def test_active_windows_repeat_every_duration() -> None:
    one, two = parse_fedscale(_trace())
    assert [one.online_at(t) for t in (0, 19.9, 20, 49, 55, 75, 100, 160)] == [
        True,
        True,
        False,
        False,
        True,
        False,
        True,
        True,
    ]
    assert [two.online_at(t) for t in (5, 10, 89, 95)] == [False, True, True, False]


def test_a_trace_becomes_what_its_fleet_would_announce() -> None:
    clients = parse_fedscale(_trace())
    records = to_records(clients, rounds=3, round_s=47.5, root="r")
    messages = [decode(r.payload) for r in records]
    by_round = {k: [m for m in messages if m.round == k] for k in (1, 2, 3)}
    # t = 0: client 1 active, client 2 not; t = 47.5: client 2 only; t = 95: neither.
    assert {(m.device_id, type(m).__name__) for m in by_round[1]} == {
        ("dev-00000", "DeviceStatus"),
        ("dev-00000", "Telemetry"),
        ("dev-00001", "DeviceStatus"),
    }
    t = next(m for m in by_round[2] if isinstance(m, Telemetry))
    assert (t.device_id, t.compute_ms_per_sample, t.bandwidth_kbps) == ("dev-00001", 9.0, 800.0)
    assert all(isinstance(m, DeviceStatus) and not m.online for m in by_round[3])
    assert all(r.topic.startswith("r/dev-") for r in records)
    assert [r.t_ns for r in records] == sorted(r.t_ns for r in records)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.pop("client_device_capacity"), "expected the maps"),
        (lambda d: d["client_device_capacity"].pop("2"), "no capacity"),
        (lambda d: d["client_device_capacity"]["1"].update(computation="fast"), "number"),
        (lambda d: d["client_device_capacity"]["1"].update(computation=0), "> 0"),
        (lambda d: d["client_behave_trace"]["1"].update(active=[5.0, 1.0]), "unsorted"),
    ],
)
def test_bad_traces_are_clear_errors(mutate: object, match: str) -> None:
    data = _trace()
    mutate(data)  # type: ignore[operator]
    with pytest.raises(RecordingError, match=match):
        parse_fedscale(data)


def test_a_client_online_round_after_round_sends_its_status_once() -> None:
    clients = load_fedscale(EXAMPLE)
    messages = [decode(r.payload) for r in to_records(clients, rounds=12, round_s=600.0)]
    steady = 0
    for i in range(len(clients)):
        online = {
            m.round for m in messages if m.device_id == device_name(i) and isinstance(m, Telemetry)
        }
        statuses = {
            m.round: m.online
            for m in messages
            if m.device_id == device_name(i) and isinstance(m, DeviceStatus)
        }
        for r in range(1, 13):
            if r in online and r - 1 in online:
                steady += 1
                assert r not in statuses, (i, r)
            else:
                assert statuses[r] == (r in online), (i, r)
    assert steady, "the example has clients online in consecutive rounds"


def test_the_shipped_example_reads(tmp_path: Path) -> None:
    clients = load_fedscale(EXAMPLE)
    assert len(clients) == 12
    trace = FleetTrace.from_fedscale(clients, 10, round_s=600.0, rounds=12)
    assert len(trace.rounds) == 12
    assert all(d < 10 for r in trace.rounds for d in r)
    assert any(trace.rounds)
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    with pytest.raises(RecordingError):
        load_fedscale(bad)


def test_fleet_trace_from_a_recording_uses_next_rounds_measurements() -> None:
    records = [
        mqtt(1, "telemetry", telemetry("dev-00001", 1, ms=2.0, kbps=1000.0)),
        mqtt(2, "telemetry", telemetry("dev-00003", 1, ms=5.0, kbps=3000.0)),
        mqtt(3, "telemetry", telemetry("dev-00001", 2, ms=7.0, kbps=900.0)),
        mqtt(4, "telemetry", telemetry("dev-00099", 2, ms=7.0, kbps=900.0)),  # not in the fleet
    ]
    trace = FleetTrace.from_records(records, num_devices=10)
    assert trace.online(1) == {1, 3}
    assert trace.online(2) == {1}
    assert trace.online(3) == {1, 3}  # loops over the trace
    now = trace.conditions(1, 1)
    assert now is not None
    assert (now.compute_ms_per_sample, now.bandwidth_kbps) == (7.0, 900.0)  # measured in 1
    reported = trace.reported(1, 2)
    assert reported == trace.conditions(1, 1)
    with pytest.raises(RecordingError):
        FleetTrace.from_records([], num_devices=10)


def test_traced_world_takes_availability_and_timing_from_the_trace() -> None:
    from clients.traced import TracedWorld
    from moe.scenario import ScenarioConfig, build_scenario

    scenario = build_scenario(ScenarioConfig(regime="label-skew", num_devices=4, num_experts=4))
    trace = FleetTrace.from_fedscale(
        [
            FedScaleClient("a", 1.0, 100_000.0, (0.0,), (), 0.0),
            FedScaleClient("b", 50.0, 200.0, (0.0,), (5.0,), 10.0),
        ],
        4,
        round_s=6.0,
        rounds=2,
    )
    world = TracedWorld(scenario, trace, time_scale=0.5)
    assert [world.available(d, 1) for d in range(4)] == [True, True, False, False]
    assert [world.available(d, 2) for d in range(4)] == [True, False, False, False]
    fast, slow = world.round_wall_s(0, [0], 1), world.round_wall_s(1, [0], 1)
    assert slow > 10 * fast
    plain = scenario.round_time_s(0, [0], 1) * 0.5
    assert fast != pytest.approx(plain)
    json.dumps(fast)


def test_fleet_from_recording_builds_a_traced_world(tmp_path: Path) -> None:
    from brokers.settings import BrokerSettings
    from clients.fleet import Fleet
    from clients.settings import FleetSettings
    from clients.traced import TracedWorld
    from fedmoe.scenario import ScenarioSettings
    from recording.writer import RecordingWriter

    path = tmp_path / "run.parquet"
    with RecordingWriter(path) as writer:
        for i, (dev, r) in enumerate([("dev-00001", 1), ("dev-00002", 1), ("dev-00002", 2)]):
            writer.append(mqtt(i, "telemetry", telemetry(dev, r)))
    settings = FleetSettings(from_recording=str(path))
    fleet = Fleet(BrokerSettings(), settings, ScenarioSettings(regime="label-skew", devices=4))
    assert isinstance(fleet.world, TracedWorld)
    assert [fleet.world.available(d, 1) for d in range(4)] == [False, True, True, False]
    assert [fleet.world.available(d, 2) for d in range(4)] == [False, False, True, False]
