"""Strategies: the fitness assignment and the baselines, behind one interface."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from moe.errors import InfeasibleAssignmentError
from moe.load import imbalance
from moe.matching.base import MatchingInput
from moe.matching.feasible import (
    AffinityFeasibleStrategy,
    LeastLoadedFeasibleStrategy,
    RandomFeasibleStrategy,
)
from moe.matching.fitness import FitnessWeights, effective_capacity, fitness_scores
from moe.matching.flexmoe import FlexMoEStrategy
from moe.matching.oort import OortStrategy
from moe.matching.solvers import assignment_violations, objective
from moe.matching.strategies import (
    STRATEGY_NAMES,
    AffinityStrategy,
    FitnessStrategy,
    LeastLoadedStrategy,
    RandomStrategy,
    make_strategy,
)


def fleet(c: int = 200, e: int = 16, seed: int = 0, *, skew: bool = True) -> MatchingInput:
    """Clients whose data mostly routes to the first three experts when skewed."""
    rng = np.random.default_rng(seed)
    popularity = np.array([8.0] * 3 + [1.0] * (e - 3)) if skew else np.ones(e)
    return MatchingInput(
        round=3,
        capacity=rng.integers(1, 4, size=c),
        deadline_capacity=rng.integers(0, 4, size=c),
        affinity=rng.dirichlet(0.3 * popularity, size=c),
        quality=np.full((c, e), np.nan),
        capability=rng.random(c),
        expert_clients=np.zeros(e),
        expert_samples=np.zeros(e),
        rounds_since_update=np.zeros(e, dtype=np.int64),
        lower=np.zeros(e, dtype=np.int64),
        upper=np.full(e, c),
    )


BASELINES = (RandomStrategy(), AffinityStrategy(), LeastLoadedStrategy())

# The slack-and-floors policy (U_e from upper_slack, L_e from min_clients), one solve.
SLACK = {"equal_load": False, "spread": False}
# Scores spelled out, so the score-dependent tests do not move with the defaults: the tuned
# score (led by the statistical utility) and the one before the utility term.
TUNED = FitnessWeights(
    quality=0.0, affinity=0.1, capability=0.1, load=0.3, exploration=0.2, utility=1.0
)
PRE_UTILITY = FitnessWeights(
    quality=0.4, affinity=0.3, capability=0.1, load=0.3, exploration=0.1, utility=0.0
)


@pytest.mark.parametrize("strategy", BASELINES, ids=lambda s: s.name)
def test_baselines_give_exactly_k_c(strategy: object) -> None:
    p = fleet()
    p = replace(p, capacity=np.concatenate([p.capacity[:-3], [0, 16, 40]]))
    assert hasattr(strategy, "assign")
    x = strategy.assign(p, np.random.default_rng(1))
    assert x.shape == (200, 16)
    assert x.dtype == np.bool_
    assert (x.sum(axis=1) == np.minimum(p.capacity, 16)).all()


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_same_input_and_rng_give_the_same_assignment(name: str) -> None:
    p = fleet()
    s = make_strategy(name)
    a = s.assign(p, np.random.default_rng(5))
    b = s.assign(p, np.random.default_rng(5))
    assert (a == b).all()


def test_affinity_picks_top_k() -> None:
    p = fleet(skew=False)
    x = AffinityStrategy().assign(p, np.random.default_rng(0))
    for c in range(p.num_clients):
        k = int(p.capacity[c])
        top = set(np.argsort(-p.affinity[c])[:k].tolist())
        assert set(np.flatnonzero(x[c]).tolist()) == top


def test_affinity_breaks_ties_at_random() -> None:
    p = replace(fleet(c=400), affinity=np.zeros((400, 16)), capacity=np.ones(400, dtype=int))
    x = AffinityStrategy().assign(p, np.random.default_rng(0))
    assert (x.sum(axis=0) > 0).all()  # not everyone on expert 0


def test_random_is_roughly_uniform() -> None:
    p = replace(fleet(c=3000), capacity=np.full(3000, 2))
    x = RandomStrategy().assign(p, np.random.default_rng(0))
    counts = x.sum(axis=0)
    assert counts.sum() == 6000
    assert np.abs(counts - 6000 / 16).max() < 80  # ~4 standard deviations


def test_least_loaded_balances_and_prefers_light_history() -> None:
    p = fleet(c=101)
    x = LeastLoadedStrategy().assign(p, np.random.default_rng(0))
    counts = x.sum(axis=0)
    assert counts.max() - counts.min() <= 1
    history = np.arange(16, dtype=float)[::-1]  # expert 15 was the least used
    p2 = replace(p, capacity=np.ones(101, dtype=int)[:101], expert_clients=history)
    p2 = replace(p2, capacity=np.array([1] * 5 + [0] * 96))
    x2 = LeastLoadedStrategy().assign(p2, np.random.default_rng(0))
    assert set(np.flatnonzero(x2.sum(axis=0)).tolist()) == {11, 12, 13, 14, 15}


def test_fitness_respects_effective_capacity_and_bounds() -> None:
    p = fleet()
    s = FitnessStrategy(**SLACK)
    x = s.assign(p, np.random.default_rng(0))
    cap = effective_capacity(p)
    lower, upper = s.bounds(p, cap)
    assert not assignment_violations(x, cap, lower, upper)
    assert (x.sum(axis=1) <= np.minimum(p.capacity, p.deadline_capacity)).all()
    assert (x[p.deadline_capacity == 0] == 0).all()
    assert (x.sum(axis=0) >= 1).all()  # L_e = 1 is feasible here: no expert starves
    assert upper.max() == int(np.ceil(1.5 * cap.sum() / 16))


def test_fitness_fills_capacity_when_scores_are_positive() -> None:
    p = fleet()
    s = FitnessStrategy(TUNED, **SLACK)
    x = s.assign(p, np.random.default_rng(0))
    assert (fitness_scores(p, TUNED) > 0).all()
    assert (x.sum(axis=1) == effective_capacity(p)).all()


def test_fitness_floors_the_most_starved_experts_when_capacity_is_short() -> None:
    p = fleet(c=5)
    p = replace(
        p,
        capacity=np.ones(5, dtype=int),
        deadline_capacity=np.ones(5, dtype=int),
        rounds_since_update=np.array([0] * 11 + [9, 8, 7, 6, 5]),
    )
    s = FitnessStrategy(**SLACK)
    lower, _ = s.bounds(p, effective_capacity(p))
    assert lower.tolist() == [0] * 11 + [1] * 5
    x = s.assign(p, np.random.default_rng(0))
    assert x[:, 11:].sum(axis=0).tolist() == [1] * 5


def test_fitness_raises_on_infeasible_hard_floors() -> None:
    three = np.full(4, 3)
    p = replace(fleet(c=4), lower=np.full(16, 2), capacity=three, deadline_capacity=three)
    with pytest.raises(InfeasibleAssignmentError, match=r"lower bounds need 32 .* only 12"):
        FitnessStrategy().assign(p, np.random.default_rng(0))
    p = replace(p, lower=np.array([5] + [0] * 15))
    with pytest.raises(InfeasibleAssignmentError, match="expert 0 needs at least 5"):
        FitnessStrategy().assign(p, np.random.default_rng(0))


@pytest.mark.parametrize("weights", [TUNED, PRE_UTILITY], ids=["tuned", "pre-utility"])
def test_fitness_lowers_load_cv_compared_to_affinity(weights: FitnessWeights) -> None:
    p = fleet(c=400, seed=3)
    # Load history says the popular experts were swamped last rounds.
    history = AffinityStrategy().assign(p, np.random.default_rng(0)).sum(axis=0).astype(float)
    p = replace(p, expert_clients=history, deadline_capacity=p.capacity)
    affinity = AffinityStrategy().assign(p, np.random.default_rng(1))
    unbounded = FitnessStrategy(weights, upper_slack=float("inf"), min_clients=0, **SLACK)
    fitness = unbounded.assign(p, np.random.default_rng(1))
    bounded = FitnessStrategy(weights, **SLACK).assign(p, np.random.default_rng(1))
    cv_affinity, _ = imbalance(affinity.sum(axis=0))
    cv_unbounded, _ = imbalance(fitness.sum(axis=0))
    cv_bounded, _ = imbalance(bounded.sum(axis=0))
    assert cv_unbounded < 0.75 * cv_affinity  # the load term alone
    assert cv_bounded < 0.5 * cv_affinity  # with U_e and L_e
    assert affinity.sum() == fitness.sum() == bounded.sum()


def test_fitness_exact_and_fast_agree() -> None:
    p = fleet(c=300, seed=4)
    scores = fitness_scores(p, TUNED)
    exact = FitnessStrategy(TUNED, "exact", **SLACK).assign(p, np.random.default_rng(0))
    fast = FitnessStrategy(TUNED, "fast", **SLACK).assign(p, np.random.default_rng(0))
    assert objective(scores, fast) >= 0.99 * objective(scores, exact)


def test_make_strategy() -> None:
    classes = {
        "fitness": FitnessStrategy,
        "random-feasible": RandomFeasibleStrategy,
        "least-loaded-feasible": LeastLoadedFeasibleStrategy,
        "affinity-feasible": AffinityFeasibleStrategy,
        "oort": OortStrategy,
        "flex-moe": FlexMoEStrategy,
        "random": RandomStrategy,
        "affinity": AffinityStrategy,
        "least-loaded": LeastLoadedStrategy,
    }
    assert set(STRATEGY_NAMES) == set(classes)
    for name in STRATEGY_NAMES:
        built = make_strategy(name)
        assert built.name == name
        assert type(built) is classes[name]
    # One source of truth: by name is exactly the class's defaults.
    default = make_strategy("fitness")
    assert isinstance(default, FitnessStrategy)
    assert default.weights == FitnessWeights()
    assert default.equal_load
    assert default.spread
    assert default.solver == "auto"
    s = make_strategy("fitness", solver="fast", upper_slack=2.0)
    assert isinstance(s, FitnessStrategy)
    assert s.solver == "fast"
    assert s.upper_slack == 2.0
    assert s.weights == FitnessWeights()
    with pytest.raises(ValueError, match="unknown matching strategy 'nope'"):
        make_strategy("nope")
    with pytest.raises(ValueError, match="takes no arguments"):
        make_strategy("random", seed=1)
    with pytest.raises(ValueError, match="upper_slack"):
        FitnessStrategy(upper_slack=0.5)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_an_empty_round(name: str) -> None:
    p = fleet(c=0)
    x = make_strategy(name).assign(p, np.random.default_rng(0))
    assert x.shape == (0, 16)


def test_fitness_keeps_the_callers_bounds_hard() -> None:
    p = fleet(c=100)
    p = replace(p, upper=np.full(16, 5), lower=np.array([3] + [0] * 15))
    s = FitnessStrategy(upper_slack=10.0, **SLACK)
    x = s.assign(p, np.random.default_rng(0))
    counts = x.sum(axis=0)
    assert counts.max() <= 5
    assert counts[0] >= 3
    lower, upper = s.bounds(p, effective_capacity(p))
    assert upper.tolist() == [5] * 16
    assert lower[0] == 3
    bad = replace(p, upper=np.full(16, 2))
    with pytest.raises(InfeasibleAssignmentError, match="expert 0 needs at least 3"):
        s.assign(bad, np.random.default_rng(0))
