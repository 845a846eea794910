"""The fitness strategy's policy as the experiment and the matcher run it: equal load per
round, every client's first expert before anyone's second, one LP for small rounds."""

from __future__ import annotations

import numpy as np
import pytest

from moe.load import imbalance
from moe.matching import FitnessStrategy, MatchingInput, make_strategy
from moe.matching.fitness import FitnessWeights, effective_capacity, fitness_scores
from moe.matching.solvers import assignment_violations, objective, solve_exact


def round_problem(c: int = 10, e: int = 8, seed: int = 0) -> MatchingInput:
    """A round like the fleet's: ~10 clients, k_c in 1..3, some short of time."""
    rng = np.random.default_rng(seed)
    cap = rng.integers(1, 4, size=c)
    return MatchingInput(
        round=5,
        capacity=cap,
        deadline_capacity=np.minimum(cap, rng.integers(0, 4, size=c)),
        affinity=rng.dirichlet(np.full(e, 0.3), size=c),
        quality=np.where(rng.random((c, e)) < 0.3, rng.random((c, e)), np.nan),
        capability=rng.random(c),
        expert_clients=rng.random(e) * 3,
        expert_samples=rng.random(e) * 100,
        rounds_since_update=rng.integers(0, 3, size=e),
        lower=np.zeros(e, dtype=np.int64),
        upper=np.full(e, c, dtype=np.int64),
    )


def test_equal_load_gives_every_expert_the_same_clients() -> None:
    strategy = FitnessStrategy(equal_load=True, spread=False)
    for seed in range(20):
        p = round_problem(seed=seed)
        cap = effective_capacity(p)
        x = strategy.assign(p, np.random.default_rng(0))
        lower, upper = strategy.bounds(p, cap)
        assert not assignment_violations(x, cap, lower, upper)
        counts = x.sum(axis=0)
        m = int(cap.sum()) // 8
        if m >= 1:
            assert (counts == counts[0]).all()
            assert counts[0] >= 1
            assert imbalance(counts)[0] == 0.0
        else:
            assert counts.max() <= 1


def test_spread_gives_each_client_one_expert_first() -> None:
    strategy = FitnessStrategy(equal_load=True, spread=True)
    plain = FitnessStrategy(equal_load=True, spread=False)
    for seed in range(20):
        p = round_problem(c=12, seed=seed)
        cap = effective_capacity(p)
        x = strategy.assign(p, np.random.default_rng(0))
        lower, upper = strategy.bounds(p, cap)
        assert not assignment_violations(x, cap, lower, upper)
        slots = int(upper.sum())
        able = int((cap > 0).sum())
        if slots >= able:
            assert (x.sum(axis=1) >= np.minimum(cap, 1)).all()
        # Never more clients served than by the one-stage solve, never fewer.
        y = plain.assign(p, np.random.default_rng(0))
        assert (x.any(axis=1)).sum() >= (y.any(axis=1)).sum()
        assert x.sum() == y.sum()


@pytest.mark.parametrize("equal_load", [False, True], ids=["slack", "equal-load"])
def test_small_rounds_solve_one_lp_with_the_same_optimum(equal_load: bool) -> None:
    # One solve (spread=False): the single LP's optimum is the exact solver's.
    strategy = FitnessStrategy(equal_load=equal_load, spread=False)
    for seed in range(10):
        p = round_problem(c=15, seed=seed)
        cap = effective_capacity(p)
        lower, upper = strategy.bounds(p, cap)
        scores = fitness_scores(p, strategy.weights)
        x = strategy.assign(p, np.random.default_rng(0))
        reference = solve_exact(scores, cap, lower, upper)
        assert objective(scores, x) == objective(scores, reference)


def test_make_strategy_builds_the_tuned_fitness() -> None:
    s = make_strategy("fitness")
    assert isinstance(s, FitnessStrategy)
    assert s.weights == FitnessWeights()
    assert s.equal_load
    assert s.spread
    override = make_strategy("fitness", equal_load=False)
    assert isinstance(override, FitnessStrategy)
    assert not override.equal_load
