"""Peer strategies: deadline-feasible baselines, Oort and FLEX-MoE."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from moe.matching.base import MatchingInput, MatchingStrategy
from moe.matching.feasible import (
    AffinityFeasibleStrategy,
    LeastLoadedFeasibleStrategy,
    RandomFeasibleStrategy,
)
from moe.matching.fitness import effective_capacity
from moe.matching.flexmoe import FlexMoEStrategy
from moe.matching.oort import OortStrategy
from moe.matching.solvers import assignment_violations


def fleet(c: int = 60, e: int = 8, seed: int = 0, *, round: int = 5) -> MatchingInput:
    """Clients with every optional field filled; some with deadline capacity 0 or never seen."""
    rng = np.random.default_rng(seed)
    deadline = rng.integers(0, 4, size=c)
    quality = np.where(rng.random((c, e)) < 0.5, rng.random((c, e)), np.nan)
    return MatchingInput(
        round=round,
        capacity=rng.integers(1, 4, size=c),
        deadline_capacity=deadline,
        affinity=rng.dirichlet(np.ones(e), size=c),
        quality=quality,
        capability=rng.random(c),
        expert_clients=np.zeros(e),
        expert_samples=np.zeros(e),
        rounds_since_update=np.zeros(e, dtype=np.int64),
        lower=np.zeros(e, dtype=np.int64),
        upper=np.full(e, c),
        num_samples=rng.integers(50, 500, size=c).astype(float),
        data_loss=np.where(rng.random(c) < 0.3, np.nan, rng.random(c) + 0.5),
        expert_loss=rng.random((c, e)) * 2.0,
        last_round=rng.integers(-1, round, size=c),
        time_first=rng.uniform(10.0, 50.0, size=c),
        time_per_expert=rng.uniform(5.0, 20.0, size=c),
        deadline_s=100.0,
    )


FEASIBLE = (RandomFeasibleStrategy, AffinityFeasibleStrategy, LeastLoadedFeasibleStrategy)
ALL = (*FEASIBLE, OortStrategy, FlexMoEStrategy)


@pytest.mark.parametrize("cls", ALL, ids=lambda s: s.name)
def test_respects_effective_capacity_and_is_deterministic(cls: type[MatchingStrategy]) -> None:
    p = fleet()
    x = cls().assign(p, np.random.default_rng(3))
    assert x.shape == (60, 8)
    assert x.dtype == np.bool_
    assert (x.sum(axis=1) <= effective_capacity(p)).all()
    assert not x[p.deadline_capacity == 0].any()
    assert (x == cls().assign(p, np.random.default_rng(3))).all()


@pytest.mark.parametrize("cls", FEASIBLE, ids=lambda s: s.name)
def test_feasible_baselines_fill_exactly_the_effective_capacity(
    cls: type[MatchingStrategy],
) -> None:
    p = fleet()
    x = cls().assign(p, np.random.default_rng(0))
    assert (x.sum(axis=1) == effective_capacity(p)).all()


def test_affinity_feasible_takes_top_experts() -> None:
    p = fleet()
    x = AffinityFeasibleStrategy().assign(p, np.random.default_rng(0))
    cap = effective_capacity(p)
    for c in range(p.num_clients):
        top = set(np.argsort(-p.affinity[c])[: cap[c]].tolist())
        assert set(np.flatnonzero(x[c]).tolist()) == top


def two_clients(**kw: object) -> MatchingInput:
    """Two explored clients, one expert slot each, four experts (so one client is picked)."""
    base: dict[str, object] = {
        "round": 50,
        "capacity": np.array([2, 2]),
        "deadline_capacity": np.array([2, 2]),
        "affinity": np.full((2, 4), 0.25),
        "quality": np.full((2, 4), np.nan),
        "capability": np.full(2, 0.5),
        "expert_clients": np.zeros(4),
        "expert_samples": np.zeros(4),
        "rounds_since_update": np.zeros(4, dtype=np.int64),
        "lower": np.zeros(4, dtype=np.int64),
        "upper": np.full(4, 2),
        "num_samples": np.array([100.0, 100.0]),
        "data_loss": np.array([2.0, 0.5]),
        "last_round": np.array([40, 40]),
        "time_first": np.array([10.0, 10.0]),
        "time_per_expert": np.array([5.0, 5.0]),
        "deadline_s": 100.0,
    }
    base.update(kw)
    return MatchingInput(**base)  # type: ignore[arg-type]


def oort_chosen(strategy: OortStrategy, p: MatchingInput, seed: int = 0) -> list[int]:
    x = strategy.assign(p, np.random.default_rng(seed))
    return np.flatnonzero(x.any(axis=1)).tolist()


def test_oort_prefers_high_utility() -> None:
    # Round 50: ε is at its floor 0.2, int(0.2 · 2 slots) = 0 slots for exploration.
    oort = OortStrategy(slots_per_expert=0.5)  # 2 slots: one client
    assert oort_chosen(oort, two_clients()) == [0]
    assert oort_chosen(OortStrategy(slots_per_expert=0.5), two_clients(data_loss=[0.5, 2.0])) == [1]


def test_oort_penalises_clients_slower_than_t() -> None:
    # Client 0 has 1.5× the utility but takes 4× the preferred duration: (1/4)² cuts it.
    slow = two_clients(
        data_loss=np.array([1.5, 1.0]),
        time_first=np.array([390.0, 10.0]),
        num_samples=np.array([100.0, 100.0]),
    )
    assert oort_chosen(OortStrategy(slots_per_expert=0.5), slow) == [1]
    # Within T (a larger deadline) the penalty is gone.
    assert oort_chosen(OortStrategy(slots_per_expert=0.5), replace(slow, deadline_s=500.0)) == [0]


def test_oort_explores_unexplored_clients_early() -> None:
    p = fleet(c=200, e=16, round=1)
    p = replace(p, deadline_capacity=np.full(200, 1), capacity=np.full(200, 1))
    oort = OortStrategy()
    _raw, unexplored = oort.utility(p)
    chosen = oort_chosen(oort, p)
    assert len(chosen) == 16
    share = np.mean(unexplored[chosen])
    assert share >= 0.85  # ε(1) = 0.9 · 0.98 → 14 of 16 slots
    late = oort_chosen(OortStrategy(), replace(p, round=200))
    assert np.mean(unexplored[late]) <= 0.25  # ε at its floor 0.2 → 3 of 16


def test_oort_covers_experts_least_taken_first() -> None:
    p = replace(fleet(c=200, e=16), capacity=np.full(200, 2), deadline_capacity=np.full(200, 2))
    x = OortStrategy().assign(p, np.random.default_rng(0))
    assert x.sum() == 16
    assert (x.sum(axis=0) == 1).all()


def test_oort_pacer_raises_t_when_utility_drops() -> None:
    oort = OortStrategy(pacer_step=2, pacer_delta=0.1)
    p = two_clients(last_round=np.array([0, 0]))
    times = np.array([10.0])
    for r, loss in enumerate([2.0, 2.0, 1.0, 1.0]):
        oort.assign(replace(p, round=r, data_loss=np.array([loss, loss])), np.random.default_rng(r))
    assert oort.preferred_duration(replace(p, round=4), times) == pytest.approx(110.0)
    # Rising utility: no raise at the next decision.
    for r, loss in zip(range(4, 8), [1.0, 1.0, 3.0, 3.0], strict=True):
        oort.assign(replace(p, round=r, data_loss=np.array([loss, loss])), np.random.default_rng(r))
    assert oort.preferred_duration(replace(p, round=8), times) == pytest.approx(110.0)


def test_oort_is_repeatable_within_a_round() -> None:
    oort = OortStrategy(pacer_step=1)
    p = fleet()
    for r in range(5):
        oort.assign(replace(p, round=r), np.random.default_rng(r))
    a = oort.assign(replace(p, round=5), np.random.default_rng(9))
    b = oort.assign(replace(p, round=5), np.random.default_rng(9))
    assert (a == b).all()


def test_flexmoe_respects_load_bounds() -> None:
    p = fleet(c=80, e=8)
    s = FlexMoEStrategy()
    cap = effective_capacity(p)
    lower, upper = s.bounds(p, cap)
    x = s.assign(p, np.random.default_rng(0))
    assert not assignment_violations(x, cap, lower, upper)
    assert (lower == 1).all()
    assert upper.max() == int(np.ceil(1.2 * cap.sum() / 8))
    assert (x.sum(axis=1) == cap).all()  # every slot used


def test_flexmoe_prefers_high_fitness_pairs() -> None:
    e = 4
    p = two_clients(
        affinity=np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]]),
        quality=np.array([[0.9, np.nan, 0.1, np.nan], [np.nan, 0.1, np.nan, 0.9]]),
        expert_loss=np.array([[0.1, 3.0, 3.0, 3.0], [3.0, 3.0, 3.0, 0.1]]),
        capacity=np.array([1, 1]),
        deadline_capacity=np.array([1, 1]),
    )
    f = FlexMoEStrategy().fitness(p)
    assert f.shape == (2, e)
    assert np.isfinite(f).all()
    assert f[0].argmax() == 0
    assert f[1].argmax() == 3
    x = FlexMoEStrategy().assign(p, np.random.default_rng(0))
    assert x[0].tolist() == [True, False, False, False]
    assert x[1].tolist() == [False, False, False, True]


def test_flexmoe_balances_a_popular_expert() -> None:
    c, e = 20, 4
    p = two_clients(
        capacity=np.ones(c, dtype=int),
        deadline_capacity=np.ones(c, dtype=int),
        affinity=np.tile([0.7, 0.1, 0.1, 0.1], (c, 1)),
        quality=np.full((c, e), np.nan),
        capability=np.full(c, 0.5),
        upper=np.full(e, c),
        num_samples=None,
        data_loss=None,
        last_round=None,
        time_first=None,
        time_per_expert=None,
    )
    x = FlexMoEStrategy().assign(p, np.random.default_rng(0))
    assert x.sum(axis=0).max() <= 6  # ceil(1.2 · 20 / 4)
    assert x.sum() == c


def test_oort_pacer_starts_over_when_rounds_go_back() -> None:
    oort = OortStrategy(pacer_step=2)
    p = two_clients(last_round=np.array([0, 0]))
    for r, loss in enumerate([2.0, 2.0, 1.0, 1.0, 1.0]):
        oort.assign(replace(p, round=r, data_loss=np.array([loss, loss])), np.random.default_rng(r))
    assert oort.raises(4) == 1
    oort.assign(replace(p, round=0), np.random.default_rng(0))  # a new run
    assert oort.preferred_duration(replace(p, round=0), np.array([10.0])) == pytest.approx(100.0)
