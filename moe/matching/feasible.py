"""Deadline-feasible baselines: today's baselines, each client given its effective capacity.

`RandomStrategy`, `AffinityStrategy` and `LeastLoadedStrategy` give every client min(k_c, E)
experts and so ignore the deadline: a slow client is handed more experts than it can return
in time. These peers choose exactly as the baselines do but give each client
`effective_capacity(problem)` = min(k_c, deadline capacity, E) experts, the slots the fitness
strategy may fill, so a comparison with it isolates *which* experts each client gets from
*how many* it can finish.

They run the baseline on a copy of the problem whose `capacity` is the effective capacity (the
baselines clip `capacity` to [0, E] and use nothing else of it), so the choice, including the
draws from `rng`, is the baseline's own.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import numpy as np

from moe.matching.base import BoolArray, MatchingInput
from moe.matching.fitness import effective_capacity
from moe.matching.strategies import AffinityStrategy, LeastLoadedStrategy, RandomStrategy


def _feasible(problem: MatchingInput) -> MatchingInput:
    """The problem with k_c replaced by the effective capacity."""
    return replace(problem, capacity=effective_capacity(problem))


class RandomFeasibleStrategy(RandomStrategy):
    """`RandomStrategy` with exactly `effective_capacity` experts per client."""

    name: ClassVar[str] = "random-feasible"

    def assign(self, problem: MatchingInput, rng: np.random.Generator) -> BoolArray:
        """Random distinct experts, exactly the effective capacity per client."""
        return super().assign(_feasible(problem), rng)


class AffinityFeasibleStrategy(AffinityStrategy):
    """`AffinityStrategy` (top experts by gate affinity) with exactly `effective_capacity`
    experts per client."""

    name: ClassVar[str] = "affinity-feasible"

    def assign(self, problem: MatchingInput, rng: np.random.Generator) -> BoolArray:
        """Top experts by affinity, exactly the effective capacity per client."""
        return super().assign(_feasible(problem), rng)


class LeastLoadedFeasibleStrategy(LeastLoadedStrategy):
    """`LeastLoadedStrategy` (round-robin by load) with exactly `effective_capacity` experts
    per client."""

    name: ClassVar[str] = "least-loaded-feasible"

    def assign(self, problem: MatchingInput, rng: np.random.Generator) -> BoolArray:
        """Round-robin by load, exactly the effective capacity per client."""
        return super().assign(_feasible(problem), rng)
