"""Fitness scoring, its terms, feasibility and building the matcher's input."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from moe.load import ExpertLoadState, on_assignment, on_round_closed, on_update_applied
from moe.matching import fitness as fitness_module
from moe.matching.base import MatchingInput
from moe.matching.fitness import (
    FitnessWeights,
    build_matching_input,
    capability_scores,
    deadline_capacity,
    effective_capacity,
    exploration_bonus,
    fitness_scores,
    load_pressure,
    normalised_affinity,
    statistical_utility,
)
from moe.profiles import TelemetryReading, fold_round_outcome, fold_telemetry


def problem(c: int = 3, e: int = 4, **kw: object) -> MatchingInput:
    rng = np.random.default_rng(0)
    base: dict[str, object] = {
        "round": 5,
        "capacity": np.full(c, 2),
        "deadline_capacity": np.full(c, 2),
        "affinity": rng.dirichlet(np.ones(e), size=c),
        "quality": np.full((c, e), np.nan),
        "capability": np.full(c, 0.5),
        "expert_clients": np.zeros(e),
        "expert_samples": np.zeros(e),
        "rounds_since_update": np.zeros(e, dtype=np.int64),
        "lower": np.zeros(e, dtype=np.int64),
        "upper": np.full(e, c),
    }
    base.update(kw)
    return MatchingInput(**base)  # type: ignore[arg-type]


NONE = {
    "quality": 0.0,
    "affinity": 0.0,
    "capability": 0.0,
    "load": 0.0,
    "exploration": 0.0,
    "utility": 0.0,
}
# One term at a time, every other weight explicitly 0 (not the defaults).
ONLY = {term: FitnessWeights(**{**NONE, term: 1.0}) for term in NONE}
LOAD_ONLY = {**NONE, "load": 1.0}


def test_matching_input_checks_shapes() -> None:
    with pytest.raises(ValueError, match="quality"):
        problem(quality=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="lower"):
        problem(lower=np.zeros(3))
    with pytest.raises(ValueError, match="affinity"):
        problem(affinity=np.zeros(4))
    with pytest.raises(ValueError, match="trials"):
        problem(trials=np.zeros((3, 5)))


def test_normalised_affinity() -> None:
    a = normalised_affinity(np.array([[0.5, 0.25, 0.25], [0.0, 0.0, 0.0]]))
    assert a.tolist() == [[1.0, 0.5, 0.5], [0.0, 0.0, 0.0]]


def test_unmeasured_quality_starts_from_affinity() -> None:
    p = problem()
    a = normalised_affinity(p.affinity)
    assert np.allclose(fitness_scores(p, ONLY["quality"]), a)
    q = np.full((3, 4), np.nan)
    q[0, 1] = 0.9
    f = fitness_scores(replace(p, quality=q), ONLY["quality"])
    assert f[0, 1] == pytest.approx(0.9)
    assert f[0, 0] == pytest.approx(a[0, 0])


def test_capability_is_a_per_client_offset() -> None:
    p = problem(capability=np.array([0.0, 0.5, 2.0]))
    f = fitness_scores(p, ONLY["capability"])
    assert f[:, 0].tolist() == [0.0, 0.5, 1.0]  # clipped to [0, 1]
    assert np.allclose(f, f[:, :1])


def test_default_formula_by_hand() -> None:
    p = problem(
        c=1,
        e=2,
        affinity=np.array([[0.8, 0.2]]),
        quality=np.array([[np.nan, 0.3]]),
        capability=np.array([0.6]),
        trials=np.array([[0, 3]]),
    )
    w = FitnessWeights()
    assert w == FitnessWeights(
        quality=0.0, affinity=0.1, capability=0.1, load=0.3, exploration=0.2, utility=1.0
    )
    f = fitness_scores(p)
    assert np.array_equal(f, fitness_scores(p, w))
    bonus = math.sqrt(math.log(7.0))  # round 5: ln(t + 2)
    # No load, no samples anywhere, nothing stale yet: P = 0 for both experts.
    assert np.allclose(load_pressure(p, w), 0.0)
    # No sample counts or losses: |B| = 1 and L = 1 everywhere, so U = A, scaled by its
    # 95th percentile over the round (0.2 + 0.95 * 0.6 = 0.77) and clipped to 1.
    top = 0.2 + 0.95 * (0.8 - 0.2)
    u = [min(0.8 / top, 1.0), 0.2 / top]
    assert np.allclose(statistical_utility(p), [u])
    # Q̃ (weight 0) starts from Ã for the unmeasured pair; Ã = [1, 0.25].
    assert f[0, 0] == pytest.approx(0.0 * 1.0 + 0.1 * 1.0 + 0.1 * 0.6 + 1.0 * u[0] + 0.2 * bonus)
    assert f[0, 1] == pytest.approx(
        0.0 * 0.3 + 0.1 * 0.25 + 0.1 * 0.6 + 1.0 * u[1] + 0.2 * bonus / 2.0
    )


def test_statistical_utility() -> None:
    p = problem(
        c=3,
        e=2,
        affinity=np.array([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]]),
        num_samples=np.array([10.0, 20.0, 40.0]),
        data_loss=np.array([1.0, 3.0, np.nan]),
        expert_loss=np.array([[2.0, np.nan], [np.nan, np.nan], [np.nan, np.nan]]),
    )
    u = statistical_utility(p)
    # L: client 0 measured expert 0 (2.0), falls back to its data loss for expert 1 (1.0);
    # client 1 reported only its data loss (3.0); client 2 nothing: the median 2.0.
    # |B|·A·L = [[10, 5], [60, 0], [20, 60]]; the 95th percentile is 60.
    assert np.allclose(u, np.array([[10.0, 5.0], [60.0, 0.0], [20.0, 60.0]]) / 60.0)
    assert ((u >= 0.0) & (u <= 1.0)).all()
    assert u[1, 1] == 0.0  # zero affinity: nothing of client 1's data reaches expert 1
    # An outlier above the 95th percentile is clipped to 1, not allowed to flatten the rest.
    big = statistical_utility(replace(p, num_samples=np.array([10.0, 20.0, 4000.0])))
    assert big.max() == 1.0
    assert ((big >= 0.0) & (big <= 1.0)).all()
    assert big[1, 1] == 0.0
    # Nothing known at all: |B| = 1 and L = 1, so U is A scaled by its 95th percentile.
    bare = statistical_utility(replace(p, num_samples=None, data_loss=None, expert_loss=None))
    a = p.affinity
    assert np.allclose(bare, np.clip(a / np.quantile(a, 0.95), 0.0, 1.0))
    assert statistical_utility(replace(p, affinity=np.zeros((3, 2)))).tolist() == [[0.0] * 2] * 3


def test_load_pressure_terms() -> None:
    w = FitnessWeights()
    p = problem(
        expert_clients=np.array([6.0, 2.0, 0.0, 0.0]),
        expert_samples=np.array([100.0, 100.0, 100.0, 0.0]),
        rounds_since_update=np.array([0, 0, 3, 3]),
    )
    pressure = load_pressure(p, w)
    # mean load 2: expert 0 is at 3× (clipped to p_max = 1), expert 2 idle (−1).
    over = np.array([1.0, 0.0, -1.0, -1.0])
    starving = 0.5 * (np.array([0.0, 0.0, 0.0, 1.0]) + np.array([0.0, 0.0, 0.5, 0.5]))
    assert np.allclose(pressure, over - w.deficit * starving)
    f = fitness_scores(p, FitnessWeights(**LOAD_ONLY, load_gain=0.0))
    assert np.allclose(f, -pressure[None, :])
    assert (np.argsort(f[0]) == [0, 1, 2, 3]).all()  # the most starved expert scores best


def test_load_weight_grows_with_imbalance() -> None:
    skew = problem(expert_clients=np.array([8.0, 0.0, 0.0, 0.0]))
    flat = FitnessWeights(**LOAD_ONLY, load_gain=0.0)
    adaptive = FitnessWeights(**LOAD_ONLY, load_gain=1.0)
    cv = math.sqrt(3.0)
    assert np.allclose(fitness_scores(skew, adaptive), (1 + cv) * fitness_scores(skew, flat))


def test_no_load_means_no_pressure() -> None:
    p = problem()
    assert np.allclose(load_pressure(p, FitnessWeights()), 0.0)


def test_exploration_bonus() -> None:
    p = problem(trials=np.array([[0, 1, 3, 8]] * 3))
    x = exploration_bonus(p)
    base = math.sqrt(math.log(7.0))
    assert np.allclose(x[0], base / np.sqrt([1.0, 2.0, 4.0, 9.0]))
    later = exploration_bonus(replace(p, round=100))
    assert (later > x).all()  # untried pairs grow slowly more attractive with t
    # Without trial counts, a measured quality stands for one trial.
    q = np.full((3, 4), np.nan)
    q[:, 0] = 0.5
    derived = exploration_bonus(problem(quality=q))
    assert np.allclose(derived[:, 0], base / math.sqrt(2.0))
    assert np.allclose(derived[:, 1:], base)
    no_x = FitnessWeights(exploration=0.0)
    with_x = FitnessWeights(exploration=0.2)
    assert (fitness_scores(p, with_x) > fitness_scores(p, no_x)).all()


def test_weights_validation() -> None:
    with pytest.raises(ValueError, match="quality"):
        FitnessWeights(quality=-1.0)
    with pytest.raises(ValueError, match="stale_rounds"):
        FitnessWeights(stale_rounds=0.0)


def test_effective_capacity() -> None:
    p = problem(capacity=np.array([3, 1, 9]), deadline_capacity=np.array([1, 2, 9]))
    assert effective_capacity(p).tolist() == [1, 1, 4]


def test_deadline_capacity_time_model() -> None:
    # 100 samples × 10 ms = 1 s compute; 8 kbit/s = 1000 B/s; shared 500 B → 1 s both ways;
    # each expert 250 B → 0.5 s both ways. Deadline 4 s leaves 2 s → 4 experts (clip 3).
    # expert_cost=0: compute flat in k here (the fleet's per-expert cost is tested with it).
    k = deadline_capacity(
        [10.0, 10.0, 10.0, 50.0],
        [8.0, 8.0, 16.0, 8.0],
        [100, 100, 100, 100],
        deadline_s=4.0,
        shared_bytes=500.0,
        expert_bytes=250.0,
        max_experts=3,
        expert_cost=0.0,
    )
    assert k.tolist() == [3, 3, 3, 0]
    k = deadline_capacity(
        [10.0],
        [8.0],
        [100],
        deadline_s=3.0,
        shared_bytes=500.0,
        expert_bytes=250.0,
        max_experts=8,
        expert_cost=0.0,
    )
    assert k.tolist() == [2]


def test_capability_scores() -> None:
    s = capability_scores([10.0, 20.0, 40.0], [100.0, 100.0, 400.0], [1.0, 0.5, 0.0], [1, 1, 0])
    assert s[1] == pytest.approx((0.5 + 0.5 + 0.5 + 1.0) / 4)
    assert s[0] > s[1]
    assert ((s >= 0) & (s <= 1)).all()
    assert capability_scores([], [], [], []).shape == (0,)


def test_build_matching_input_from_profiles_and_load() -> None:
    def tele(dev: str, mem: float) -> TelemetryReading:
        return TelemetryReading(dev, 0, 10.0, 800.0, mem, 0.9, 50, (1.0, 3.0, 0.0))

    a = fold_telemetry(None, tele("a", 100.0), now=1.0)
    b = fold_telemetry(None, tele("b", 4096.0), now=1.0)
    b = fold_round_outcome(
        b, round=0, assigned=True, completed_in_time=True, expert_losses={1: 0.0, 7: 1.0}
    )
    load = ExpertLoadState.empty(3)
    load = on_assignment(load, np.array([[0, 1, 0], [0, 1, 1]], dtype=bool))
    load = on_round_closed(on_update_applied(load, 1, 40.0))
    p = build_matching_input(
        [a, b], load, round=1, deadline_s=60.0, shared_bytes=1e4, expert_bytes=1e4
    )
    assert p.num_clients == 2
    assert p.num_experts == 3
    assert p.capacity.tolist() == [1, 3]
    assert p.affinity[0].tolist() == [0.25, 0.75, 0.0]
    assert np.isnan(p.quality[0]).all()
    assert p.quality[1, 1] == pytest.approx(1.0)
    assert np.isnan(p.quality[1, 0])
    assert p.trials is not None
    assert p.trials.tolist() == [[0, 0, 0], [0, 1, 0]]
    assert p.expert_clients.tolist() == [0.0, 2.0, 1.0]
    assert p.expert_samples.tolist() == [0.0, 40.0, 0.0]
    assert p.rounds_since_update.tolist() == [1, 0, 1]
    assert p.lower.tolist() == [0, 0, 0]
    assert p.upper.tolist() == [2, 2, 2]
    assert p.deadline_capacity.tolist() == [3, 3]
    assert fitness_scores(p).shape == (2, 3)
    empty = build_matching_input(
        [], load, round=1, deadline_s=1.0, shared_bytes=1.0, expert_bytes=1.0
    )
    assert empty.num_clients == 0


def test_the_utility_scale_is_exact_on_small_fleets_and_sampled_evenly_on_huge_ones() -> None:
    rng = np.random.default_rng(3)
    small = rng.random((1000, 32))
    assert fitness_module._scale_quantile(small) == float(np.quantile(small, 0.95))
    # Columns with very different scales: a stride sharing a factor with the row length
    # would see only some of them.
    columns = np.geomspace(0.01, 10.0, 256)
    huge = rng.random((fitness_module.QUANTILE_SAMPLE // 64, 256)) * columns
    exact = float(np.quantile(huge, 0.95))
    assert fitness_module._scale_quantile(huge) == pytest.approx(exact, rel=0.01)
