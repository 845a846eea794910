"""The matcher plans every round of a run with ONE strategy instance (built by `build_clock`),
so a stateful strategy (Oort's pacer and utility history) keeps its state across rounds; each
assignment respects the clients' effective capacity (k_c and the scenario's deadline)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from fedmoe.scenario import ScenarioSettings
from moe.load import ExpertLoadState, on_assignment, on_round_closed
from moe.matching import (
    STRATEGY_NAMES,
    MatchingInput,
    MatchingStrategy,
    build_matching_input,
    effective_capacity,
    make_strategy,
)
from moe.matching.base import BoolArray
from moe.matching.oort import OortStrategy
from moe.profiles import fold_telemetry
from moe.scenario import build_scenario, device_id
from moe.wire import client_profile, profile_snapshot
from schemas.messages import ProfileSnapshot
from services.matcher.app import build_clock
from services.matcher.planning import RoundPlan, RoundPlanner
from services.matcher.settings import MatcherSettings

# A deadline that binds: some devices can finish fewer experts than k_c, one none at all.
SCENARIO_SETTINGS = ScenarioSettings(devices=12, experts=5, seed=7, deadline_s=3.0)
SCENARIO = build_scenario(SCENARIO_SETTINGS.config())
E = SCENARIO_SETTINGS.experts
OFFLINE = 4  # this device is offline in round 2
INDEX = {device_id(i): i for i in range(SCENARIO_SETTINGS.devices)}


def snapshots(round_: int, trained: dict[int, int]) -> list[ProfileSnapshot]:
    """Every device's announcement for `round_`; `trained` maps a device to the last round it
    was assigned work in (it then reports a loss, as after a training)."""
    out = []
    for i in range(SCENARIO_SETTINGS.devices):
        profile = fold_telemetry(None, SCENARIO.telemetry(i, SCENARIO.initial_parts(), 1), now=1.0)
        if i in trained:
            profile = replace(
                profile, last_round=trained[i], rounds_assigned=1, data_loss=0.5 + 0.1 * i
            )
        profile = replace(profile, online=not (round_ == 2 and i == OFFLINE))
        out.append(profile_snapshot(profile, message_id=f"p{i}", timestamp=1.0, round=round_))
    return out


def problem_of(
    plan: RoundPlan, snaps: list[ProfileSnapshot], load: ExpertLoadState
) -> MatchingInput:
    """The input the in-process simulation builds for the plan's candidates (engine.py)."""
    by_id = {s.device_id: s for s in snaps}
    return build_matching_input(
        [client_profile(by_id[d]) for d in plan.candidates],
        load,
        round=plan.round,
        deadline_s=SCENARIO.config.deadline_s,
        shared_bytes=SCENARIO.part_bytes["shared"],
        expert_bytes=SCENARIO.part_bytes["expert-0"],
        epochs=SCENARIO.config.epochs,
    )


@pytest.fixture
def assign_calls(monkeypatch: pytest.MonkeyPatch) -> list[MatchingStrategy]:
    """Records the strategy instance of every `assign` of the two strategies under test."""
    calls: list[MatchingStrategy] = []
    for name in ("oort", "affinity-feasible"):
        cls = type(make_strategy(name))
        original = cls.assign

        def recording(
            self: MatchingStrategy,
            problem: MatchingInput,
            rng: np.random.Generator,
            _original: Callable[..., BoolArray] = original,
        ) -> BoolArray:
            calls.append(self)
            return _original(self, problem, rng)

        monkeypatch.setattr(cls, "assign", recording)
    return calls


@pytest.mark.parametrize("name", ["oort", "affinity-feasible"])
def test_two_rounds_reuse_the_strategy_and_respect_effective_capacity(
    name: str, assign_calls: list[MatchingStrategy]
) -> None:
    clock = build_clock(MatcherSettings(strategy=name), SCENARIO_SETTINGS)
    planner = clock.planner
    assert isinstance(planner, RoundPlanner)
    strategy = planner.strategy
    assert strategy.name == name

    load = ExpertLoadState.empty(E)
    trained: dict[int, int] = {}
    for r in (1, 2):
        snaps = snapshots(r, trained)
        plan = planner(r, snaps, load)
        problem = problem_of(plan, snaps, load)
        cap = effective_capacity(problem)
        assert (cap < problem.capacity).any()  # the deadline binds somewhere
        rows = plan.assignment.sum(axis=1)
        assert (rows <= cap).all(), (r, rows, cap)
        if name == "affinity-feasible":
            np.testing.assert_array_equal(rows, cap)  # exactly its effective capacity
        else:  # Oort: a selected client fills its effective capacity, the others get none
            assert ((rows == 0) | (rows == cap)).all(), (r, rows, cap)
            assert rows.sum() >= min(E, int(cap.sum()))
        assert plan.devices == int((rows > 0).sum()) > 0
        if r == 2:
            assert device_id(OFFLINE) not in plan.candidates
        trained.update({INDEX[d]: r for d in plan.experts})
        load = on_round_closed(on_assignment(load, plan.assignment))

    # One instance planned both rounds: the one the clock was built with.
    assert len(assign_calls) == 2
    assert all(s is strategy for s in assign_calls)
    assert clock.planner is planner
    if isinstance(strategy, OortStrategy):
        assert sorted(strategy._history) == [1, 2]  # the pacer's history spans both rounds


def test_oort_over_the_matcher_equals_one_instance_over_the_same_rounds() -> None:
    """As the simulation runs one instance over all rounds, so does the matcher."""
    planner = build_clock(MatcherSettings(strategy="oort"), SCENARIO_SETTINGS).planner
    assert isinstance(planner, RoundPlanner)
    direct = make_strategy("oort")
    load = ExpertLoadState.empty(E)
    trained: dict[int, int] = {}
    for r in (1, 2, 3):
        snaps = snapshots(r, trained)
        plan = planner(r, snaps, load)
        x = direct.assign(problem_of(plan, snaps, load), SCENARIO.strategy_rng(r))
        np.testing.assert_array_equal(plan.assignment, x)
        trained.update({INDEX[d]: r for d in plan.experts})
        load = on_round_closed(on_assignment(load, plan.assignment))


def test_a_restarted_matcher_builds_a_new_strategy() -> None:
    first = build_clock(MatcherSettings(strategy="oort"), SCENARIO_SETTINGS).planner
    again = build_clock(MatcherSettings(strategy="oort"), SCENARIO_SETTINGS).planner
    assert isinstance(first, RoundPlanner)
    assert isinstance(again, RoundPlanner)
    assert first.strategy is not again.strategy


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_strategy_is_a_matcher_setting(name: str) -> None:
    clock = build_clock(MatcherSettings(strategy=name), SCENARIO_SETTINGS)
    assert clock.config.strategy == name
    assert isinstance(clock.planner, RoundPlanner)
    assert clock.planner.strategy.name == name
