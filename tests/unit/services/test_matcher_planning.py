"""The matcher's matching input and plan: candidates as protocol step 8 says, and the same
assignment as calling build_matching_input + the strategy directly."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from moe.load import ExpertLoadState, on_assignment, on_round_closed
from moe.matching import STRATEGY_NAMES, build_matching_input, make_strategy
from moe.profiles import fold_telemetry
from moe.scenario import ScenarioConfig, build_scenario
from moe.wire import client_profile, profile_snapshot
from schemas.messages import ProfileSnapshot
from services.matcher.planning import (
    MatchingContext,
    candidate_profiles,
    model_part_ids,
    plan_round,
)

SCENARIO = build_scenario(ScenarioConfig(num_devices=12, num_experts=5, seed=7))
CONTEXT = MatchingContext.from_scenario(SCENARIO)


def snapshot(i: int, round_: int, *, online: bool = True) -> ProfileSnapshot:
    profile = fold_telemetry(None, SCENARIO.telemetry(i, SCENARIO.initial_parts(), 1), now=1.0)
    profile = replace(profile, online=online)
    return profile_snapshot(profile, message_id=f"p{i}", timestamp=1.0, round=round_)


def test_part_ids_and_context_come_from_the_scenario() -> None:
    assert model_part_ids(3) == ("shared", "expert-0", "expert-1", "expert-2")
    assert CONTEXT.deadline_s == SCENARIO.config.deadline_s
    assert CONTEXT.shared_bytes == SCENARIO.part_bytes["shared"]
    assert CONTEXT.expert_bytes == SCENARIO.part_bytes["expert-4"]
    assert CONTEXT.epochs == SCENARIO.config.epochs
    assert CONTEXT.rng(4).random() == SCENARIO.strategy_rng(4).random()


def test_candidates_are_online_profiles_of_the_round_sorted_by_id() -> None:
    snaps = [
        snapshot(5, 3),
        snapshot(1, 3),
        snapshot(2, 2),  # an older round's announcement
        snapshot(3, 3, online=False),
        snapshot(0, 4),  # a later round's
        snapshot(4, 3),
    ]
    got = [s.device_id for s in candidate_profiles(snaps, 3)]
    assert got == ["dev-00001", "dev-00004", "dev-00005"]


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_plan_equals_the_direct_computation(name: str) -> None:
    r = 3
    load = on_round_closed(
        on_assignment(ExpertLoadState.empty(5), np.eye(5, dtype=bool)[[0, 1, 1, 2]])
    )
    snaps = [snapshot(i, r, online=i % 4 != 1) for i in reversed(range(12))]
    plan = plan_round(snaps, load, round=r, context=CONTEXT, strategy=make_strategy(name))
    online = sorted((s for s in snaps if s.online), key=lambda s: s.device_id)
    problem = build_matching_input(
        [client_profile(s) for s in online],
        load,
        round=r,
        deadline_s=SCENARIO.config.deadline_s,
        shared_bytes=SCENARIO.part_bytes["shared"],
        expert_bytes=SCENARIO.part_bytes["expert-0"],
        epochs=SCENARIO.config.epochs,
    )
    x = make_strategy(name).assign(problem, SCENARIO.strategy_rng(r))
    assert plan.candidates == tuple(s.device_id for s in online)
    np.testing.assert_array_equal(plan.assignment, x)
    assigned = {
        s.device_id: tuple(int(e) for e in np.flatnonzero(row))
        for s, row in zip(online, x, strict=True)
        if row.any()
    }
    assert dict(plan.experts) == assigned
    expected = plan.expected_parts(5)
    assert expected["shared"] == len(assigned) == plan.devices
    assert [expected[f"expert-{e}"] for e in range(5)] == [int(v) for v in x.sum(axis=0)]


def test_no_candidates_give_an_empty_plan() -> None:
    plan = plan_round(
        [snapshot(0, 1, online=False)],
        ExpertLoadState.empty(5),
        round=1,
        context=CONTEXT,
        strategy=make_strategy("fitness"),
    )
    assert plan.devices == 0
    assert plan.candidates == ()
    assert plan.expected_parts(5) == dict.fromkeys(model_part_ids(5), 0)


def test_a_load_of_another_expert_count_is_refused() -> None:
    with pytest.raises(ValueError, match="experts"):
        plan_round(
            [snapshot(0, 1)],
            ExpertLoadState.empty(4),
            round=1,
            context=CONTEXT,
            strategy=make_strategy("fitness"),
        )
