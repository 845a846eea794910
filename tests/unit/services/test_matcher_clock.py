"""The matcher's round clock as a pure state machine: genesis, early and deadline close, the
open rule, assignments held until their RoundOpened is read back, max_rounds, and a restart
that continues from the replayed history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from moe.load import ExpertLoadState, on_assignment, on_round_closed
from moe.matching import build_matching_input, make_strategy
from moe.parts import SHARED
from moe.profiles import fold_telemetry
from moe.scenario import ScenarioConfig, build_scenario, device_id
from moe.wire import client_profile, expert_load_message, profile_snapshot
from schemas.messages import (
    Assignment,
    DeviceStatus,
    ExpertLoad,
    Message,
    PartClosed,
    ProfileSnapshot,
    RoundClosed,
    RoundOpened,
)
from schemas.topics import Topic
from services.errors import InvalidPayload
from services.handler import Outbound
from services.matcher.clock import Announcements, ClockConfig, RoundClock
from services.matcher.planning import MatchingContext, RoundPlan, model_part_ids, plan_round

SCENARIO = build_scenario(ScenarioConfig(num_devices=6, num_experts=4, seed=3, deadline_s=6.0))
CONTEXT = MatchingContext.from_scenario(SCENARIO)
PARTS = model_part_ids(4)
DEADLINE_WALL = 20.0
GRACE = 1.0


def make_clock(**overrides: object) -> RoundClock:
    values: dict[str, object] = {
        "parts": PARTS,
        "strategy": "fitness",
        "deadline_wall_s": DEADLINE_WALL,
        "grace_s": GRACE,
        "open_delay_s": 0.5,
        "max_wait_s": 30.0,
        "max_rounds": 0,
        "fleet_size": 6,
        "wait_for_load": True,
    }
    values.update(overrides)
    strategy = make_strategy(str(values["strategy"]))

    def planner(r: int, profiles: Sequence[ProfileSnapshot], load: ExpertLoadState) -> RoundPlan:
        return plan_round(profiles, load, round=r, context=CONTEXT, strategy=strategy)

    return RoundClock(ClockConfig(**values), planner)  # type: ignore[arg-type]


def snapshot(i: int, round_: int, *, online: bool = True, ts: float = 1.0) -> ProfileSnapshot:
    reading = SCENARIO.telemetry(i, SCENARIO.initial_parts(), 1)
    profile = replace(fold_telemetry(None, reading, now=ts), online=online)
    return profile_snapshot(profile, message_id=f"p-{i}-{round_}", timestamp=ts, round=round_)


def load_message(state: ExpertLoadState, round_: int, ts: float = 1.0) -> ExpertLoad:
    return expert_load_message(
        state, message_id=f"load-{round_}", timestamp=ts, round=round_, device_id="load-monitor"
    )


def gate(value: float) -> dict[str, np.ndarray]:
    return {"gate.weight": np.full(4, value, np.float32), "gate.bias": np.zeros(1, np.float32)}


def part_closed(
    round_: int, part: str, version: int, applied: int = 0, row: dict[str, np.ndarray] | None = None
) -> PartClosed:
    return PartClosed(
        message_id=f"pc-{round_}-{part}",
        device_id="aggregator",
        round=round_,
        timestamp=1.0,
        part=part,
        version=version,
        applied=applied,
        reason="quorum",
        gate=row or {},
    )


def of_type(outputs: Sequence[Outbound], kind: type[Message]) -> list[Outbound]:
    return [o for o in outputs if isinstance(o.message, kind)]


def close_all(clock: RoundClock, round_: int, versions: dict[str, int] | None = None) -> None:
    for part in PARTS:
        clock.apply(part_closed(round_, part, (versions or {}).get(part, 0)), at=0.0)


def run_genesis(clock: RoundClock, now: float = 100.0) -> float:
    """Open and close round 0; returns the close time."""
    clock.advance(now)
    close_all(clock, 0)
    out = clock.advance(now + 0.1)
    assert [o.message.round for o in of_type(out, RoundClosed)] == [0]
    return now + 0.1


def test_genesis_round_opens_every_part_with_no_devices() -> None:
    clock = make_clock()
    assert clock.next_round == 0
    out = clock.advance(100.0)
    opened = out[0]
    assert opened.topic is Topic.ROUNDS
    assert opened.key == "round"
    msg = opened.message
    assert isinstance(msg, RoundOpened)
    assert (msg.round, msg.devices, msg.deadline, msg.device_id) == (0, 0, 100.0, "matcher")
    assert msg.expected_parts == dict.fromkeys(PARTS, 0)
    assert msg.model_versions == dict.fromkeys(PARTS, 0)
    markers = out[1:]
    assert [(m.topic, m.key) for m in markers] == [(Topic.UPDATES, p) for p in PARTS]
    assert all(m.message == msg for m in markers)  # no one assigned anything
    assert clock.open_round == 0
    assert clock.held_assignments == 0
    assert clock.advance(101.0) == []  # never two rounds open


def test_round_closes_once_every_part_closed_and_only_once() -> None:
    clock = make_clock()
    clock.advance(100.0)
    for part in PARTS[:-1]:
        clock.apply(part_closed(0, part, 0), at=100.0)
        assert of_type(clock.advance(100.2), RoundClosed) == []
    clock.apply(part_closed(0, PARTS[-1], 0), at=100.0)
    out = clock.advance(100.3)
    (closed,) = out
    assert closed.topic is Topic.ROUNDS
    assert closed.key == "round"
    msg = closed.message
    assert isinstance(msg, RoundClosed)
    assert (msg.round, msg.reason, msg.parts_closed) == (0, "parts-closed", len(PARTS))
    assert msg.model_versions == dict.fromkeys(PARTS, 0)
    assert clock.open_round is None
    # Its own RoundClosed read back and a duplicate PartClosed change nothing.
    clock.apply(msg, at=100.4)
    clock.apply(part_closed(0, PARTS[0], 0), at=100.4)
    assert of_type(clock.advance(100.5), RoundClosed) == []


def test_deadline_plus_two_graces_closes_the_round_with_what_closed() -> None:
    clock = make_clock(wait_for_load=False, max_wait_s=30.0)
    closed_at = run_genesis(clock)
    clock.advance(closed_at + 30.0)  # round 1 (max wait), deadline = opening + DEADLINE_WALL
    deadline = closed_at + 30.0 + DEADLINE_WALL
    clock.apply(part_closed(1, "shared", 0), at=deadline)
    assert clock.advance(deadline + 2 * GRACE) == []
    (closed,) = clock.advance(deadline + 2 * GRACE + 0.01)
    msg = closed.message
    assert isinstance(msg, RoundClosed)
    assert (msg.round, msg.reason, msg.parts_closed) == (1, "deadline", 1)


def test_a_part_never_closed_gets_max_wait_more_before_the_deadline_close() -> None:
    # Genesis: an aggregator still creating its parts has not closed them, and without their
    # gate rows the marker would leave devices unable to announce round 1.
    clock = make_clock(max_wait_s=30.0)
    clock.advance(100.0)  # genesis: deadline = 100
    clock.apply(part_closed(0, "shared", 0), at=100.0)
    assert clock.advance(100.0 + 2 * GRACE + 29.9) == []
    (closed,) = clock.advance(100.0 + 2 * GRACE + 30.01)
    msg = closed.message
    assert isinstance(msg, RoundClosed)
    assert (msg.round, msg.reason, msg.parts_closed) == (0, "deadline", 1)


def _open_round_one(clock: RoundClock) -> tuple[list[Outbound], float]:
    closed_at = run_genesis(clock)
    clock.apply(load_message(ExpertLoadState.empty(4), 0), at=closed_at)
    for i in range(6):
        clock.apply(snapshot(i, 1, online=i != 2), at=closed_at + 0.1)
    out = clock.advance(closed_at + 0.2)  # every device reported: no need to wait
    return out, closed_at + 0.2


def test_round_one_matches_exactly_like_build_matching_input_and_the_strategy() -> None:
    clock = make_clock()
    out, now = _open_round_one(clock)
    (opened_out,) = of_type(out, RoundOpened)[:1]
    opened = opened_out.message
    assert isinstance(opened, RoundOpened)
    # Direct computation: online profiles of round 1, sorted by id, the simulated deadline.
    profiles = [client_profile(snapshot(i, 1)) for i in range(6) if i != 2]
    problem = build_matching_input(
        profiles,
        ExpertLoadState.empty(4),
        round=1,
        deadline_s=SCENARIO.config.deadline_s,
        shared_bytes=SCENARIO.part_bytes["shared"],
        expert_bytes=SCENARIO.part_bytes["expert-0"],
        epochs=SCENARIO.config.epochs,
    )
    x = make_strategy("fitness").assign(problem, SCENARIO.strategy_rng(1))
    want = {
        p.device_id: tuple(int(e) for e in np.flatnonzero(row))
        for p, row in zip(profiles, x, strict=True)
        if row.any()
    }
    assert want, "the scenario must assign someone"
    assert opened.round == 1
    assert opened.devices == len(want)
    assert opened.deadline == pytest.approx(now + DEADLINE_WALL)
    assert opened.expected_parts["shared"] == len(want)
    for e in range(4):
        assert opened.expected_parts[f"expert-{e}"] == int(x[:, e].sum())
    # Markers first; the assignments wait for the RoundOpened to be read back.
    assert of_type(out, Assignment) == []
    assert clock.held_assignments == len(want)
    released = clock.apply(opened, at=now + 0.3)
    assert all(o.topic is Topic.ASSIGNMENTS for o in released)
    got = {o.key: o.message for o in released}
    assert {k: m.experts for k, m in got.items()} == want  # type: ignore[attr-defined]
    for device, msg in got.items():
        assert isinstance(msg, Assignment)
        assert msg.device_id == device
        assert msg.round == 1
        assert msg.deadline == opened.deadline
        assert msg.model_versions == opened.model_versions
    assert clock.apply(opened, at=now + 0.4) == []  # read back twice: assigned once


def test_the_next_round_waits_for_the_load_of_the_closed_round() -> None:
    clock = make_clock()
    closed_at = run_genesis(clock)
    for i in range(6):
        clock.apply(snapshot(i, 1), at=closed_at + 0.1)
    assert clock.advance(closed_at + 5.0) == []  # all reported, but no load yet
    clock.apply(load_message(ExpertLoadState.empty(4), 0), at=closed_at + 5.0)
    assert of_type(clock.advance(closed_at + 5.1), RoundOpened)
    assert clock.last_opening == "all-reported: 6 candidates, 6 devices reported"


def test_the_next_round_opens_when_reports_settled() -> None:
    clock = make_clock(fleet_size=6)
    closed_at = run_genesis(clock)
    clock.apply(load_message(ExpertLoadState.empty(4), 0), at=closed_at)
    assert clock.advance(closed_at + 10.0) == []  # no candidate yet: wait (up to max_wait)
    clock.apply(snapshot(0, 1), at=closed_at + 10.0)
    clock.apply(snapshot(1, 1, online=False), at=closed_at + 10.2)
    assert clock.advance(closed_at + 10.6) == []  # a report 0.4 s ago: not settled
    assert [s.device_id for s in clock.candidates(1)] == [device_id(0)]
    out = clock.advance(closed_at + 10.7)
    assert clock.last_opening == "settled: 1 candidates, 2 devices reported"
    (opened,) = [o.message for o in of_type(out, RoundOpened)][:1]
    assert isinstance(opened, RoundOpened)
    assert opened.devices <= 1  # device 1 announced itself offline


def test_settled_waits_for_a_quorum_of_the_recent_reporters() -> None:
    # Six devices reported for round 1; two report for round 2 and then a pause longer than
    # open_delay_s: 2 of 6 is under the quorum, so round 2 waits for more reports.
    clock = make_clock(fleet_size=0, wait_for_load=False, settle_quorum=0.5)
    closed_at = run_genesis(clock)
    for i in range(6):
        clock.apply(snapshot(i, 1), at=closed_at)
    out = clock.advance(closed_at + 1.0)
    assert clock.last_opening == "settled: 6 candidates, 6 devices reported"
    opened = of_type(out, RoundOpened)[0].message
    clock.apply(opened, at=closed_at + 1.0)
    close_all(clock, 1)
    t = closed_at + 2.0
    assert of_type(clock.advance(t), RoundClosed)
    for i in range(2):
        clock.apply(snapshot(i, 2), at=t)
    assert clock.advance(t + 5.0) == []  # 2 of the 6 recent reporters: wait
    clock.apply(snapshot(2, 2), at=t + 5.0)
    assert clock.advance(t + 5.4) == []  # 3 of 6 is the quorum, but not quiet yet
    assert of_type(clock.advance(t + 5.6), RoundOpened)
    assert clock.last_opening == "settled: 3 candidates, 3 devices reported"


def test_max_wait_counts_from_a_restart_not_from_the_replayed_close() -> None:
    first = make_clock()
    closed_at = run_genesis(first)
    second = make_clock(wait_for_load=False)
    assert first.closed is not None
    second.apply(first.closed, at=0.0)
    restart = closed_at + 100.0  # long after max_wait of the replayed close
    second.resume(set(), now=restart)
    assert second.advance(restart + 1.0) == []
    assert second.advance(restart + 29.9) == []
    assert of_type(second.advance(restart + 30.0), RoundOpened)
    assert second.last_opening == "max-wait: 0 candidates, 0 devices reported"


def test_max_wait_opens_a_round_even_without_candidates() -> None:
    clock = make_clock(max_wait_s=8.0)
    closed_at = run_genesis(clock)
    assert clock.advance(closed_at + 7.9) == []
    out = clock.advance(closed_at + 8.0)
    assert clock.last_opening == "max-wait: 0 candidates, 0 devices reported"
    opened = out[0].message
    assert isinstance(opened, RoundOpened)
    assert (opened.round, opened.devices) == (1, 0)
    assert opened.expected_parts == dict.fromkeys(PARTS, 0)
    assert clock.held_assignments == 0


def test_versions_follow_part_closed_into_the_next_round() -> None:
    clock = make_clock(wait_for_load=False, max_wait_s=1.0)
    closed_at = run_genesis(clock)
    clock.advance(closed_at + 1.0)  # round 1, nobody
    versions = {p: (2 if p == "expert-1" else 1) for p in PARTS}
    close_all(clock, 1, versions)
    (closed,) = of_type(clock.advance(closed_at + 1.5), RoundClosed)
    assert isinstance(closed.message, RoundClosed)
    assert closed.message.model_versions == versions
    out = clock.advance(closed_at + 2.5)
    opened = out[0].message
    assert isinstance(opened, RoundOpened)
    assert opened.round == 2
    assert opened.model_versions == versions


def test_the_round_marker_carries_each_experts_gate_row_at_its_version() -> None:
    clock = make_clock(wait_for_load=False, max_wait_s=1.0)
    clock.advance(100.0)
    for part in PARTS:  # genesis: every expert's row at version 0
        clock.apply(part_closed(0, part, 0, row=None if part == SHARED else gate(0.0)), at=0.0)
    (genesis,) = of_type(clock.advance(100.1), RoundClosed)
    assert isinstance(genesis.message, RoundClosed)
    experts = [p for p in PARTS if p != SHARED]
    assert sorted(genesis.message.gates) == sorted(experts)
    clock.advance(101.1)  # round 1, nobody
    # expert-1 moves to v1 with a new row; expert-2 moves to v1 but its row is not known (a
    # PartClosed of schema 1.0): the marker leaves expert-2 out rather than send a stale row.
    clock.apply(part_closed(1, "expert-1", 1, row=gate(1.0)), at=0.0)
    clock.apply(part_closed(1, "expert-2", 1), at=0.0)
    for part in PARTS:
        if part not in ("expert-1", "expert-2"):
            clock.apply(part_closed(1, part, 0), at=0.0)
    (closed,) = of_type(clock.advance(101.5), RoundClosed)
    message = closed.message
    assert isinstance(message, RoundClosed)
    assert sorted(message.gates) == sorted(set(experts) - {"expert-2"})
    np.testing.assert_array_equal(
        message.gates["expert-1"]["gate.weight"], gate(1.0)["gate.weight"]
    )
    np.testing.assert_array_equal(
        message.gates["expert-0"]["gate.weight"], gate(0.0)["gate.weight"]
    )
    # A restarted matcher learns the rows from the RoundClosed it reads back.
    fresh = make_clock(wait_for_load=False, max_wait_s=1.0)
    fresh.apply(message, at=0.0)
    assert sorted(fresh.gates) == sorted(message.gates)


def test_max_rounds_stops_opening() -> None:
    clock = make_clock(max_rounds=1, wait_for_load=False, max_wait_s=1.0)
    closed_at = run_genesis(clock)
    assert clock.closed is not None
    assert clock.closed.last is False  # round 1 follows the genesis
    assert of_type(clock.advance(closed_at + 1.0), RoundOpened)
    close_all(clock, 1)
    (closed,) = of_type(clock.advance(closed_at + 1.1), RoundClosed)
    assert isinstance(closed.message, RoundClosed)
    assert closed.message.last is True  # devices announce no round 2
    assert clock.advance(closed_at + 100.0) == []
    assert clock.open_round is None
    assert clock.next_round == 2


def _log_of(outputs: Sequence[Outbound]) -> list[Message]:
    return [o.message for o in outputs if o.topic is Topic.ROUNDS]


def test_restart_continues_the_open_round_and_never_reopens_it() -> None:
    first = make_clock()
    rounds_log: list[Message] = []
    rounds_log += _log_of(first.advance(100.0))
    for part in PARTS:
        pc = part_closed(0, part, 0)
        first.apply(pc, at=100.0)
        rounds_log.append(pc)
    rounds_log += _log_of(first.advance(100.1))
    load = load_message(ExpertLoadState.empty(4), 0, ts=100.2)
    first.apply(load, at=100.2)
    profiles = [snapshot(i, 1, ts=100.3) for i in range(6)]
    for s in profiles:
        first.apply(s, at=100.3)
    out = first.advance(100.4)
    rounds_log += _log_of(out)
    opened = out[0].message
    assert isinstance(opened, RoundOpened)
    assert opened.round == 1
    first.apply(opened, at=100.5)  # read back: assignments out
    rounds_log.append(part_closed(1, "shared", 1, applied=opened.devices))
    # SIGKILL. The new clock folds the history: rounds first, then load, then profiles.
    second = make_clock()
    for msg in [*rounds_log, load, *profiles]:
        assert second.apply(msg, at=100.0) == []
    assert second.open_round == 1
    assert second.next_round == 2
    assert second.advance(101.0) == []  # still open: nothing reopened, nothing closed
    for part in PARTS[1:]:
        second.apply(part_closed(1, part, 1), at=101.0)
    (closed,) = second.advance(101.5)
    assert isinstance(closed.message, RoundClosed)
    assert (closed.message.round, closed.message.reason) == (1, "parts-closed")
    assert closed.message.model_versions == dict.fromkeys(PARTS, 1)


def test_restart_after_the_deadline_closes_the_round_then_opens_the_next() -> None:
    first = make_clock(wait_for_load=False, max_wait_s=1.0)
    history = _log_of(first.advance(100.0))
    for part in PARTS:
        history.append(part_closed(0, part, 0))
        first.apply(history[-1], at=100.0)
    history += _log_of(first.advance(100.1))
    history += _log_of(first.advance(101.1))  # round 1 opens (nobody)
    assert isinstance(history[-1], RoundOpened)
    assert history[-1].round == 1
    second = make_clock(wait_for_load=False, max_wait_s=1.0)
    for msg in history:
        second.apply(msg, at=0.0)
    late = 101.1 + DEADLINE_WALL + 2 * GRACE + 1.0
    (closed,) = second.advance(late)
    assert isinstance(closed.message, RoundClosed)
    assert (closed.message.round, closed.message.reason) == (1, "deadline")
    opened = second.advance(late + 1.0)[0].message
    assert isinstance(opened, RoundOpened)
    assert opened.round == 2


def test_restart_with_a_closed_round_waits_for_the_next_rule_from_its_close_time() -> None:
    first = make_clock()
    closed_at = run_genesis(first)
    closed = first.closed
    assert closed is not None
    second = make_clock()
    second.apply(closed, at=0.0)
    assert second.open_round is None
    assert second.next_round == 1
    load = load_message(on_round_closed(ExpertLoadState.empty(4)), 0)
    second.apply(load, at=0.0)
    assert second.advance(closed_at + 29.0) == []  # no candidate, before max_wait
    opened = second.advance(closed_at + 30.0)[0].message
    assert isinstance(opened, RoundOpened)
    assert opened.round == 1


def test_the_planner_sees_the_latest_load() -> None:
    seen: list[ExpertLoadState] = []

    def planner(r: int, profiles: Sequence[ProfileSnapshot], load: ExpertLoadState) -> RoundPlan:
        seen.append(load)
        return plan_round(
            profiles, load, round=r, context=CONTEXT, strategy=make_strategy("random")
        )

    clock = RoundClock(
        ClockConfig(PARTS, "random", DEADLINE_WALL, GRACE, 0.5, 30.0, fleet_size=6), planner
    )
    closed_at = run_genesis(clock)
    state = on_round_closed(on_assignment(ExpertLoadState.empty(4), np.eye(4, dtype=bool)))
    clock.apply(load_message(state, 0), at=closed_at)
    for i in range(6):
        clock.apply(snapshot(i, 1), at=closed_at)
    assert of_type(clock.advance(closed_at + 0.1), RoundOpened)
    (load,) = seen
    np.testing.assert_array_equal(load.clients_ewma, state.clients_ewma)
    assert load.rounds_closed == state.rounds_closed


@pytest.mark.parametrize(
    "message",
    [
        part_closed(0, "expert-9", 1),
        load_message(ExpertLoadState.empty(5), 0),
        DeviceStatus(message_id="s", device_id=device_id(0), round=1, timestamp=1.0, online=True),
    ],
    ids=["unknown-part", "wrong-expert-count", "wrong-type"],
)
def test_bad_inputs_are_refused_and_change_nothing(message: Message) -> None:
    clock = make_clock()
    clock.advance(100.0)
    with pytest.raises(InvalidPayload):
        clock.apply(message, at=100.0)
    assert clock.open_round == 0
    assert clock.versions == dict.fromkeys(PARTS, 0)


def _crash_after_open() -> tuple[list[Message], list[Message], list[Assignment], RoundOpened]:
    """A clock that opened round 1 and died before its assignments went out: the log it left
    (rounds; load + profiles), the assignments it would have sent, and its RoundOpened."""
    first = make_clock()
    rounds_log = _log_of(first.advance(100.0))
    for part in PARTS:
        rounds_log.append(part_closed(0, part, 0))
        first.apply(rounds_log[-1], at=100.0)
    rounds_log += _log_of(first.advance(100.1))
    inputs: list[Message] = [load_message(ExpertLoadState.empty(4), 0, ts=100.2)]
    inputs += [snapshot(i, 1, ts=100.3) for i in range(6)]
    for msg in inputs:
        first.apply(msg, at=100.3)
    out = first.advance(100.4)
    rounds_log += _log_of(out)
    opened = out[0].message
    assert isinstance(opened, RoundOpened)
    would = [o.message for o in first.apply(opened, at=100.5)]
    assert all(isinstance(a, Assignment) for a in would)
    return rounds_log, inputs, would, opened  # type: ignore[return-value]


def _markers_of_first_open() -> list[Outbound]:
    """The markers the crashed clock of `_crash_after_open` produced for round 1."""
    first = make_clock()
    for part in PARTS:
        first.advance(100.0)
        first.apply(part_closed(0, part, 0), at=100.0)
    first.advance(100.1)
    first.apply(load_message(ExpertLoadState.empty(4), 0, ts=100.2), at=100.3)
    for i in range(6):
        first.apply(snapshot(i, 1, ts=100.3), at=100.3)
    return first.advance(100.4)[1:]


def test_each_marker_names_its_parts_devices_with_their_sample_caps() -> None:
    _, inputs, would, opened = _crash_after_open()
    markers = _markers_of_first_open()
    samples = {s.device_id: s.num_samples for s in inputs if isinstance(s, ProfileSnapshot)}
    assert opened.assigned == {}  # the `rounds` copy carries none
    by_part = {m.key: m.message for m in markers if isinstance(m.message, RoundOpened)}
    assert len(by_part) == len(PARTS)
    assert by_part["shared"].assigned == {a.device_id: samples[a.device_id] for a in would}
    for part in PARTS[1:]:
        e = int(part.split("-")[1])
        want = {a.device_id: samples[a.device_id] for a in would if e in a.experts}
        assert by_part[part].assigned == want
        assert len(want) == opened.expected_parts[part]


def _restored(history: list[Message]) -> RoundClock:
    clock = make_clock()
    for msg in history:
        clock.apply(msg, at=100.0)
    return clock


def test_resume_sends_the_assignments_a_crash_kept_from_the_log() -> None:
    rounds_log, inputs, would, opened = _crash_after_open()
    assert len(would) == opened.devices > 0
    clock = _restored(rounds_log + inputs)
    assert "announcing" in clock.resume(set(), now=101.0)
    out = clock.advance(101.0)
    # The same round, again, each marker with its part's devices as the first time.
    again = [o.message for o in out if isinstance(o.message, RoundOpened)]
    assert [replace(m, assigned={}) for m in again] == [opened] * (1 + len(PARTS))
    assert [(o.topic, o.key) for o in out[1:]] == [(Topic.UPDATES, p) for p in PARTS]
    assert [o.message for o in out[1:]] == [m.message for m in _markers_of_first_open()]
    released = clock.apply(opened, at=101.1)
    assert [o.message for o in released] == would
    assert clock.advance(101.2) == []  # nothing else: the round is open, not reopened


def test_resume_sends_only_the_missing_assignments() -> None:
    rounds_log, inputs, would, _ = _crash_after_open()
    assert len(would) >= 2
    clock = _restored(rounds_log + inputs)
    first_device = would[0].device_id
    clock.resume({first_device}, now=101.0)
    opened = clock.advance(101.0)[0].message
    released = clock.apply(opened, at=101.1)
    assert [o.message for o in released] == would[1:]


def test_resume_does_nothing_when_all_went_out_or_it_is_too_late_or_profiles_moved() -> None:
    rounds_log, inputs, would, opened = _crash_after_open()
    clock = _restored(rounds_log + inputs)
    assert "all" in clock.resume({a.device_id for a in would}, now=101.0)
    assert clock.advance(101.0) == []
    clock = _restored(rounds_log + inputs)
    assert "deadline passed" in clock.resume(set(), now=opened.deadline)
    # Fewer candidates than the round assigned: the same plan cannot come out again.
    gone = [int(a.device_id[-1]) for a in would[:3]]
    changed = [*inputs, *(snapshot(i, 1, online=False, ts=100.6) for i in gone)]
    clock = _restored(rounds_log + changed)
    assert "changed" in clock.resume(set(), now=101.0)
    assert clock.advance(101.0) == []
    assert clock.held_assignments == 0
    # A device the log shows assigned but the new plan leaves out: not the same plan.
    clock = _restored(rounds_log + inputs)
    assert "changed" in clock.resume({"dev-99999"}, now=101.0)


def test_announcements_follow_each_devices_latest_snapshot() -> None:
    seen = Announcements()
    seen.update(snapshot(0, 1, ts=1.0), at=1.0)
    seen.update(snapshot(1, 1, online=False, ts=2.0), at=2.0)
    assert (seen.reported(1), seen.online(1), seen.last_at(1)) == (2, 1, 2.0)
    seen.update(snapshot(0, 1, online=False, ts=3.0), at=3.0)  # went away (last will)
    assert (seen.reported(1), seen.online(1)) == (2, 0)
    seen.update(snapshot(0, 2, ts=4.0), at=4.0)  # announced for the next round
    assert (seen.reported(1), seen.online(1), seen.reported(2), seen.online(2)) == (1, 0, 1, 1)
    assert seen.last_at(3) == float("-inf")


def test_a_device_that_went_offline_is_no_candidate() -> None:
    clock = make_clock()
    closed_at = run_genesis(clock)
    clock.apply(load_message(ExpertLoadState.empty(4), 0), at=closed_at)
    clock.apply(snapshot(0, 1), at=closed_at)
    clock.apply(snapshot(0, 1, online=False), at=closed_at + 0.1)
    assert clock.advance(closed_at + 5.0) == []
    assert clock.candidates(1) == []


def test_rounds_with_devices_and_nothing_applied_count_as_starved() -> None:
    clock = make_clock()
    _, now = _open_round_one(clock)
    assert clock.starved_rounds == 0  # the genesis round assigns nobody: never starved
    # Round 1 closes at its deadline with every part closed and nothing applied.
    close_all(clock, 1)
    clock.advance(now + 0.1)
    assert clock.starved_rounds == 1
    opened = clock.opened
    assert opened is not None
    assert opened.devices > 0
    # Round 2: one update applied anywhere resets the count.
    clock.apply(load_message(ExpertLoadState.empty(4), 1), at=now + 0.2)
    for i in range(6):
        clock.apply(snapshot(i, 2), at=now + 0.2)
    clock.advance(now + 0.3)
    assert clock.open_round == 2
    for part in PARTS:
        clock.apply(part_closed(2, part, 1, applied=1 if part == PARTS[0] else 0), at=now + 0.4)
    clock.advance(now + 0.5)
    assert clock.starved_rounds == 0


@pytest.mark.parametrize("open_on_recent", [True, False])
def test_from_round_two_a_round_opens_once_every_recent_reporter_reported(
    open_on_recent: bool,
) -> None:
    # Ten devices in the scenario, four of them never online (no profile): the scenario's count
    # is never reached, yet round 2 opens the moment the six that reported lately all did,
    # without waiting out the quiet period, when `open_on_recent` says so; else it waits for
    # quiet. Round 1 cannot use the rule (nobody had reported).
    clock = make_clock(
        fleet_size=10, wait_for_load=False, settle_quorum=0.5, open_on_recent=open_on_recent
    )
    closed_at = run_genesis(clock)
    clock.apply(snapshot(0, 1), at=closed_at)
    assert clock.advance(closed_at + 0.1) == []  # one report for round 1 is not "everyone"
    for i in range(1, 6):
        clock.apply(snapshot(i, 1), at=closed_at + 0.1)
    out = clock.advance(closed_at + 1.0)
    assert clock.last_opening == "settled: 6 candidates, 6 devices reported"
    clock.apply(of_type(out, RoundOpened)[0].message, at=closed_at + 1.0)
    close_all(clock, 1)
    t = closed_at + 2.0
    assert of_type(clock.advance(t), RoundClosed)
    for i in range(5):
        clock.apply(snapshot(i, 2, online=i != 4), at=t)
    assert clock.advance(t + 0.01) == []  # five of the six recent reporters
    clock.apply(snapshot(5, 2), at=t + 0.02)
    if open_on_recent:
        assert of_type(clock.advance(t + 0.03), RoundOpened)  # no quiet period
        assert clock.last_opening == "all-recent-reported: 5 candidates, 6 devices reported"
    else:
        assert clock.advance(t + 0.03) == []
        assert of_type(clock.advance(t + 0.6), RoundOpened)
        assert clock.last_opening == "settled: 5 candidates, 6 devices reported"
