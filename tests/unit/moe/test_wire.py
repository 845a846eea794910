from __future__ import annotations

import dataclasses

import numpy as np

from moe.load import ExpertLoadState, on_assignment, on_round_closed, on_update_applied
from moe.profiles import fold_round_outcome, fold_telemetry
from moe.scenario import ScenarioConfig, build_scenario
from moe.wire import (
    client_profile,
    expert_load_message,
    expert_load_state,
    profile_snapshot,
    telemetry_reading,
)
from schemas import decode, encode
from schemas.messages import ModelUpdate, Telemetry


def test_profile_round_trips_through_the_wire() -> None:
    sc = build_scenario(ScenarioConfig(num_devices=4, num_experts=4))
    reading = sc.telemetry(1, sc.initial_parts(), 1)
    profile = fold_telemetry(None, reading, now=10.0)
    profile = fold_round_outcome(
        profile, round=3, assigned=True, completed_in_time=True, expert_losses={2: 0.4}
    )
    snap = profile_snapshot(profile, message_id="m-1", timestamp=11.0, round=3)
    back = client_profile(decode(encode(snap)))  # type: ignore[arg-type]
    assert back == profile


def test_telemetry_reading_keeps_every_field() -> None:
    sc = build_scenario(ScenarioConfig(num_devices=4, num_experts=4))
    r = sc.telemetry(0, sc.initial_parts(), 1)
    fields = {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}
    msg = Telemetry(message_id="t-1", round=0, timestamp=1.0, **fields)
    assert telemetry_reading(msg) == r


def test_expert_load_round_trips_through_the_wire() -> None:
    state = ExpertLoadState.empty(3)
    state = on_assignment(state, np.array([[1, 0, 1], [0, 1, 1]], dtype=bool))
    state = on_update_applied(state, 2, 17.0)
    state = on_round_closed(on_assignment(on_round_closed(state), np.eye(3, dtype=bool)))
    msg = expert_load_message(state, message_id="l-1", timestamp=1.0, round=2, device_id="lm")
    back = expert_load_state(decode(encode(msg)))  # type: ignore[arg-type]
    for name in (
        "assigned_clients",
        "accepted_updates",
        "clients_ewma",
        "samples_routed",
        "rounds_since_update",
    ):
        np.testing.assert_array_equal(getattr(back, name), getattr(state, name))
    assert back.rounds_closed == state.rounds_closed == 2
    assert msg.cv > 0


def test_a_diverged_training_still_gives_a_valid_update() -> None:
    import math

    from moe.training import train_local
    from moe.wire import model_update, reported_losses

    sc = build_scenario(ScenarioConfig(num_devices=4, num_experts=4))
    data = sc.data.devices[0]
    result = train_local(sc.model, sc.initial_parts(), data.x, data.y, [1], seed=3)
    diverged = dataclasses.replace(result, train_loss=math.nan, expert_loss={1: math.inf})
    update = model_update(
        diverged,
        device_id="dev-00000",
        round=2,
        experts=[1],
        base_versions={"shared": 0, "expert-1": 0},
        train_seconds=0.5,
        timestamp=1.0,
    )
    assert [(p.part, p.loss) for p in update.parts] == [("shared", 0.0), ("expert-1", 0.0)]
    assert update.parts[1].weight == result.expert_samples[1]
    assert reported_losses(diverged) == {}
    back = decode(encode(update))
    assert isinstance(back, ModelUpdate)
    assert [p.loss for p in back.parts] == [0.0, 0.0]
