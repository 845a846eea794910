"""FLEX-MoE: client-expert fitness scores and a load-balanced assignment.

FLEX-MoE (B. Zhang et al., "FLEX-MoE: Federated Mixture-of-Experts with Load-balanced Expert
Assignment", arXiv:2512.23070, 2025) scores every (client, expert) pair from training feedback
(per assigned expert the client reports its usage, local accuracy and average loss) and
assigns experts by an optimisation that maximises the summed fitness under each client's
capacity k_c and system-wide balance of the experts' load. The paper's exact score and
constraints were not available to us beyond its abstract and a summary of its method; the
form below is our reading of them.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from moe.errors import InfeasibleAssignmentError
from moe.matching.base import BoolArray, FloatArray, IntArray, MatchingInput, MatchingStrategy
from moe.matching.fitness import effective_capacity, normalised_affinity
from moe.matching.solvers import check_feasible, solve, solve_exact

# Up to this many pairs one LP runs over all of them (as `FitnessStrategy` does).
_EXACT_PAIRS = 20_000
# Added to every fitness so that the LP uses every slot (FLEX-MoE gives each client k_c).
_FILL = 1e-3


class FlexMoEStrategy(MatchingStrategy):
    """FLEX-MoE's fitness-maximising, load-balanced assignment.

    Fitness per pair, a weighted mean of the signals known for it (weights renormalised over
    the known ones, so a pair never trained is scored by usage and loss alone):

    - usage: the gate's routing share `affinity`, each row scaled by its maximum;
    - performance: `quality`, the EMA of exp(−loss) after local training (NaN: unknown);
    - loss: exp(−`expert_loss`), the global expert's RMS loss on the client's routed data
      before training (NaN: unknown), on the same scale as quality.

    The paper smooths fitness with an EMA across rounds; quality already is one and usage and
    loss are current measurements, so the strategy stays stateless (same input, same answer;
    nothing is lost when the matcher restarts).

    Assignment: the LP max Σ fitness·x s.t. Σ_e x ≤ cap_c and L_e ≤ Σ_c x ≤ U_e, with U_e =
    ceil(`upper_slack`·Σ cap / E) (balanced load) and L_e = max(caller's floor, 1) when that
    is feasible (every expert trained), else the caller's floor. The caller's bounds stay hard.

    Capacity: the paper knows nothing of a client's speed beyond k_c; here k_c is
    `effective_capacity` (min(k_c, deadline capacity)), the same slots and the same
    information every peer strategy gets.
    """

    name: ClassVar[str] = "flex-moe"

    def __init__(
        self,
        *,
        usage: float = 1.0,
        performance: float = 1.0,
        loss: float = 1.0,
        upper_slack: float = 1.2,
    ) -> None:
        """Configure the fitness weights and the load bound U_e's slack over the even share."""
        weights = (usage, performance, loss)
        if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("fitness weights must be finite, >= 0 and not all 0")
        if not upper_slack >= 1.0:
            raise ValueError("upper_slack must be >= 1")
        self.usage = usage
        self.performance = performance
        self.loss = loss
        self.upper_slack = upper_slack

    def fitness(self, problem: MatchingInput) -> FloatArray:
        """Fitness (C, E) in [0, 1]; 0 where no signal is known."""
        usage = normalised_affinity(problem.affinity)
        perf = np.clip(np.asarray(problem.quality, dtype=np.float64), 0.0, 1.0)
        shape = usage.shape
        loss = (
            np.full(shape, np.nan)
            if problem.expert_loss is None
            else np.exp(-np.clip(np.asarray(problem.expert_loss, dtype=np.float64), 0.0, None))
        )
        num = np.zeros(shape)
        den = np.zeros(shape)
        for w, v in ((self.usage, usage), (self.performance, perf), (self.loss, loss)):
            known = ~np.isnan(v)
            num += np.where(known, w * np.nan_to_num(v), 0.0)
            den += np.where(known, w, 0.0)
        out: FloatArray = np.divide(num, den, out=np.zeros(shape), where=den > 0)
        return out

    def bounds(self, problem: MatchingInput, cap: IntArray) -> tuple[IntArray, IntArray]:
        """(L, U): balanced ceilings and, where feasible, a floor of one client per expert."""
        e = problem.num_experts
        hard_lower = np.asarray(problem.lower, dtype=np.int64)
        share = max(1, math.ceil(self.upper_slack * float(cap.sum()) / e - 1e-9))
        upper = np.minimum(
            np.minimum(np.asarray(problem.upper, dtype=np.int64), problem.num_clients),
            np.maximum(share, hard_lower),
        )
        lower = np.minimum(np.maximum(hard_lower, 1), upper)
        try:
            check_feasible(cap, lower, upper)
        except InfeasibleAssignmentError:
            lower = hard_lower
        return lower, upper

    def assign(self, problem: MatchingInput, rng: np.random.Generator) -> BoolArray:
        """Solve the LP (no randomness)."""
        cap = effective_capacity(problem)
        lower, upper = self.bounds(problem, cap)
        scores = self.fitness(problem) + _FILL
        if scores.size <= _EXACT_PAIRS:
            return solve_exact(scores, cap, lower, upper, pad=problem.num_experts)
        return solve(scores, cap, lower, upper)
