"""Client–expert matching: fitness scoring, feasibility, assignment solvers, baselines."""

from moe.matching.base import MatchingInput, MatchingStrategy
from moe.matching.fitness import (
    FitnessWeights,
    build_matching_input,
    capability_scores,
    deadline_capacity,
    effective_capacity,
    fitness_scores,
)
from moe.matching.solvers import (
    assignment_violations,
    check_assignment,
    check_feasible,
    dual_bound,
    objective,
    solve,
    solve_exact,
    solve_fast,
)
from moe.matching.strategies import (
    STRATEGY_NAMES,
    AffinityStrategy,
    FitnessStrategy,
    LeastLoadedStrategy,
    RandomStrategy,
    make_strategy,
)

__all__ = [
    "STRATEGY_NAMES",
    "AffinityStrategy",
    "FitnessStrategy",
    "FitnessWeights",
    "LeastLoadedStrategy",
    "MatchingInput",
    "MatchingStrategy",
    "RandomStrategy",
    "assignment_violations",
    "build_matching_input",
    "capability_scores",
    "check_assignment",
    "check_feasible",
    "deadline_capacity",
    "dual_bound",
    "effective_capacity",
    "fitness_scores",
    "make_strategy",
    "objective",
    "solve",
    "solve_exact",
    "solve_fast",
]
