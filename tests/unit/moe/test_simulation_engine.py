from __future__ import annotations

import numpy as np
import pytest

from moe.load import ExpertLoadState, on_round_closed
from moe.matching import build_matching_input, make_strategy
from moe.parts import SHARED, expert_part_id
from moe.profiles import fold_telemetry
from moe.scenario import ScenarioConfig, build_scenario, device_id
from moe.simulation.engine import run_simulation
from moe.simulation.records import RoundRecord
from moe.training import evaluate

TINY_FLEET = ScenarioConfig(regime="fleet", num_devices=12, num_experts=4, seed=5)
TINY_SKEW = ScenarioConfig(regime="label-skew", num_devices=20, num_experts=4, seed=2)


def test_same_seed_same_run() -> None:
    a = run_simulation(TINY_FLEET, "fitness", 4)
    b = run_simulation(TINY_FLEET, "fitness", 4)
    assert a.records == b.records
    assert a.initial_accuracy == b.initial_accuracy
    assert len(a.records) == 4
    assert [r.round for r in a.records] == [1, 2, 3, 4]


def test_strategies_are_paired_on_online_sets_and_initial_weights() -> None:
    sc = build_scenario(TINY_FLEET)
    runs = {
        name: run_simulation(TINY_FLEET, name, 5, scenario=sc)
        for name in ("fitness", "random", "affinity", "least-loaded")
    }
    online = [len(sc.online(r)) for r in range(1, 6)]
    initial, _ = evaluate(sc.model, sc.initial_parts(), sc.data.test_x, sc.data.test_y)
    for res in runs.values():
        assert [rec.devices_online for rec in res.records] == online
        assert res.initial_accuracy == initial
        assert res.seed == TINY_FLEET.seed
        assert res.regime == "fleet"
    assert {res.strategy for res in runs.values()} == set(runs)


def test_first_round_assignment_is_the_protocols() -> None:
    """Round 1 assigns what steps 5-8 of the bus protocol compute by hand."""
    sc = build_scenario(TINY_FLEET)
    parts = sc.initial_parts()
    online = [int(i) for i in sc.online(1)]
    profiles = [fold_telemetry(None, sc.telemetry(i, parts, 1), now=0.0) for i in online]
    load = on_round_closed(ExpertLoadState.empty(4))  # the genesis round's RoundClosed
    problem = build_matching_input(
        sorted(profiles, key=lambda p: p.device_id),
        load,
        round=1,
        deadline_s=TINY_FLEET.deadline_s,
        shared_bytes=sc.part_bytes[SHARED],
        expert_bytes=sc.part_bytes[expert_part_id(0)],
        epochs=TINY_FLEET.epochs,
    )
    x = make_strategy("random").assign(problem, sc.strategy_rng(1))
    seen: list[RoundRecord] = []
    run_simulation(TINY_FLEET, "random", 1, on_round=seen.append)
    (rec,) = seen
    assert rec.devices_online == len(online)
    assert rec.devices_assigned == int(x.any(axis=1).sum())
    late = sum(
        sc.round_time_s(online[row], list(np.flatnonzero(x[row])), 1) > TINY_FLEET.deadline_s
        for row in range(len(online))
        if x[row].any()
    )
    assert rec.late_updates == late
    assert rec.updates_applied == rec.devices_assigned - late


def test_late_updates_are_never_aggregated() -> None:
    # A deadline nobody can meet: every update is late, so the model never changes.
    config = ScenarioConfig(regime="fleet", num_devices=12, num_experts=4, seed=5, deadline_s=1e-6)
    res = run_simulation(config, "random", 3)
    assert all(rec.late_updates == rec.devices_assigned > 0 for rec in res.records)
    assert all(rec.updates_applied == 0 for rec in res.records)
    assert all(rec.accuracy == res.initial_accuracy for rec in res.records)
    # The fitness strategy sees the deadline and assigns nobody it would be late for.
    fit = run_simulation(config, "fitness", 3)
    assert all(rec.devices_assigned == 0 and rec.bytes_up == 0 for rec in fit.records)


def test_fitness_is_never_late_with_static_devices() -> None:
    """Devices that are their profiles: the matcher's deadline capacity predicts exactly what
    the fleet model charges."""
    config = ScenarioConfig(regime="fleet", num_devices=30, seed=1, static_devices=True)
    res = run_simulation(config, "fitness", 8)
    assert sum(rec.late_updates for rec in res.records) == 0
    assert sum(rec.updates_applied for rec in res.records) > 0
    baseline = run_simulation(config, "random", 8)
    assert sum(rec.late_updates for rec in baseline.records) > 0


def test_devices_that_vary_make_estimates_wrong_sometimes() -> None:
    """With real conditions varying around the profiles the matcher plans on estimates, so
    even a deadline-aware plan is late now and then, and a deadline-blind one far more."""
    config = ScenarioConfig(regime="fleet", num_devices=30, seed=1)
    fit = run_simulation(config, "fitness", 20)
    blind = run_simulation(config, "random", 20)
    late_fit = sum(rec.late_updates for rec in fit.records)
    assert 0 < late_fit < sum(rec.late_updates for rec in blind.records)


def test_learning_happens() -> None:
    res = run_simulation(TINY_SKEW, "random", 12)
    assert res.initial_accuracy < 0.3
    late_half = [rec.accuracy for rec in res.records[6:]]
    assert max(late_half) > 0.6  # chance is 0.1
    assert np.mean(late_half) > 0.4


def test_bytes_count_only_the_assigned_parts() -> None:
    res = run_simulation(TINY_FLEET, "least-loaded", 3)
    assert res.whole_model_bytes > 0
    for rec in res.records:
        if rec.devices_assigned:
            per_device = (rec.bytes_down + rec.bytes_up) / rec.devices_assigned
            # shared + at most 3 of 4 experts, both ways, against the whole model both ways.
            assert 0 < per_device < 2 * res.whole_model_bytes
            assert rec.bytes_down > 0
            assert rec.bytes_up > rec.bytes_down * 0.9


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rounds"):
        run_simulation(TINY_FLEET, "random", -1)
    with pytest.raises(ValueError, match="different config"):
        run_simulation(TINY_FLEET, "random", 1, scenario=build_scenario(TINY_SKEW))
    with pytest.raises(ValueError, match="unknown matching strategy"):
        run_simulation(TINY_FLEET, "nope", 1)


def test_device_ids_sort_like_indices() -> None:
    # Candidates are sorted by device id; the engine relies on ids sorting like indices.
    ids = [device_id(i) for i in (3, 10, 200, 9)]
    assert sorted(ids) == [device_id(i) for i in (3, 9, 10, 200)]
