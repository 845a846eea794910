"""Matching strategies: the fitness-driven assignment and the baselines it is compared with.

- `FitnessStrategy`: scores every pair (`fitness.fitness_scores`), offers each client at most
  its effective capacity min(k_c, deadline capacity), bounds every expert's clients, and solves
  the b-matching (`solvers`).
- Baselines, each giving every client exactly min(k_c, E) experts (k_c = `problem.capacity`,
  not deadline-aware) and ignoring fitness, load and the per-expert bounds: `RandomStrategy`,
  `AffinityStrategy` (gate-affinity top-k), `LeastLoadedStrategy` (round-robin by load).

`make_strategy(name, **kwargs)` builds one by name: "fitness", "random", "affinity",
"least-loaded".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from moe.errors import InfeasibleAssignmentError
from moe.matching.base import BoolArray, FloatArray, IntArray, MatchingInput, MatchingStrategy
from moe.matching.fitness import (
    FitnessWeights,
    effective_capacity,
    fitness_scores,
)
from moe.matching.solvers import SolverName, check_feasible, solve, solve_exact

# Up to this many (client, expert) pairs the exact solver runs one LP over all of them.
SMALL_PROBLEM_PAIRS = 20_000


def _baseline_capacity(problem: MatchingInput) -> IntArray:
    return np.clip(np.asarray(problem.capacity, dtype=np.int64), 0, problem.num_experts)


def _first_k(order: IntArray, k: IntArray) -> BoolArray:
    """x with x[c, order[c, j]] = True for j < k[c]: each row's first k_c experts in order."""
    c, e = order.shape
    x = np.zeros((c, e), dtype=bool)
    take = np.arange(e)[None, :] < k[:, None]
    rows = np.broadcast_to(np.arange(c)[:, None], (c, e))
    x[rows[take], order[take]] = True
    return x


class FitnessStrategy(MatchingStrategy):
    """Fitness-scored, deadline-aware, load-bounded assignment.

    Bounds, one of two policies:

    - slack: U_e = min(problem.upper_e, max(1, ceil(slack · Σ_c cap_c / E),
      problem.lower_e)); L_e = max(problem.lower_e, min_clients) for as many experts as the
      capacities allow, the most starved first (most rounds since an update, then fewest
      samples).
    - equal load (`equal_load`, the default): L_e = U_e = m for every expert, the largest m
      the effective capacities admit (m ≤ Σ cap / E), so every expert gets exactly as many
      clients this round (load CV 0); slots beyond m·E stay unused. With fewer slots than
      experts (m = 0) each expert takes at most one client. Falls back to slack when the
      caller's bounds rule equal counts out.

    The caller's `problem.lower` / `problem.upper` stay hard; an infeasible floor raises
    InfeasibleAssignmentError.

    With `spread`, every client gets its first expert before any client gets a second (two
    solves: capacity 1, then the rest), so bounds that leave slots unused cut second experts,
    not whole clients (a client without an expert does not train the shared part either).

    A client is left below its effective capacity only where every further expert scores ≤ 0
    for it, every expert it could add is at U_e, or a floor elsewhere needs its slot.

    The defaults (here and in `FitnessWeights`) are the configuration tuned on seeds 0-19
    (moe/simulation/TUNING.md): equal load, spread, and a score led by the statistical utility.
    `make_strategy("fitness")`, the matcher and the experiment build exactly this.
    """

    name: ClassVar[str] = "fitness"

    def __init__(
        self,
        weights: FitnessWeights | None = None,
        solver: SolverName = "auto",
        *,
        upper_slack: float = 1.5,
        min_clients: int = 1,
        equal_load: bool = True,
        spread: bool = True,
    ) -> None:
        """Configure the strategy.

        Args:
            weights: fitness weights (the defaults when None).
            solver: "exact", "fast", or "auto" (exact for small problems).
            upper_slack: U_e as a multiple of the even share Σ cap / E (≥ 1; inf disables).
            min_clients: the floor policy: clients every expert should get where feasible.
            equal_load: the equal-load policy instead of slack and floors.
            spread: every client's first expert before anyone's second.
        """
        if not upper_slack >= 1.0:
            raise ValueError(f"upper_slack must be >= 1, got {upper_slack!r}")
        if min_clients < 0:
            raise ValueError("min_clients must be >= 0")
        self.weights = weights or FitnessWeights()
        self.solver: SolverName = solver
        self.upper_slack = upper_slack
        self.min_clients = min_clients
        self.equal_load = equal_load
        self.spread = spread

    def bounds(self, problem: MatchingInput, cap: IntArray) -> tuple[IntArray, IntArray]:
        """(L, U) for this round: the caller's bounds tightened by the strategy's policy."""
        e = problem.num_experts
        c = problem.num_clients
        hard_lower = np.asarray(problem.lower, dtype=np.int64)
        upper = np.minimum(np.asarray(problem.upper, dtype=np.int64), c)
        if self.equal_load:
            equal = self._equal_bounds(cap, hard_lower, upper)
            if equal is not None and equal.any():
                return equal, equal.copy()
            if equal is not None:
                # Fewer slots than experts: one client per expert at most.
                return hard_lower, np.minimum(upper, np.maximum(hard_lower, 1))
        if math.isfinite(self.upper_slack):
            share = math.ceil(self.upper_slack * float(cap.sum()) / e - 1e-9)
            # The policy never undercuts the caller's floor; the caller's ceiling stays hard.
            upper = np.minimum(upper, np.maximum(max(1, share), hard_lower))
        lower = hard_lower
        if self.min_clients > 0:
            # Most starved first: stale experts, then those that saw fewest samples.
            order = np.lexsort(
                (
                    np.asarray(problem.expert_samples, dtype=np.float64),
                    -np.asarray(problem.rounds_since_update, dtype=np.int64),
                )
            )
            floor = np.minimum(self.min_clients, upper)

            def with_floors(n: int) -> IntArray:
                out = hard_lower.copy()
                idx = order[:n]
                out[idx] = np.maximum(out[idx], floor[idx])
                return out

            def feasible(n: int) -> bool:
                try:
                    check_feasible(cap, with_floors(n), upper)
                except InfeasibleAssignmentError:
                    return False
                return True

            # Feasibility is monotone in the number of floored experts: binary search.
            lo, hi = 0, e
            if feasible(hi):
                lo = hi
            else:
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if feasible(mid):
                        lo = mid
                    else:
                        hi = mid - 1
            lower = with_floors(lo)
        return lower, upper

    @staticmethod
    def _equal_bounds(cap: IntArray, hard_lower: IntArray, upper: IntArray) -> IntArray | None:
        """L = U = m for every expert, the largest feasible m (None when the caller's bounds
        rule equal counts out)."""
        e = hard_lower.shape[0]
        top = min(int(cap.sum()) // e if e else 0, int(upper.min()) if e else 0)
        if int(hard_lower.max(initial=0)) > top:
            return None
        for m in range(top, int(hard_lower.max(initial=0)) - 1, -1):
            bounds = np.full(e, m, dtype=np.int64)
            try:
                check_feasible(cap, bounds, bounds)
            except InfeasibleAssignmentError:
                continue
            return bounds
        return None

    def assign(self, problem: MatchingInput, rng: np.random.Generator) -> BoolArray:
        """Solve max Σ F·x under effective capacities and the (L, U) bounds (no randomness)."""
        cap = effective_capacity(problem)
        lower, upper = self.bounds(problem, cap)
        scores = fitness_scores(problem, self.weights)
        if self.spread:
            spread = self._solve_spread(scores, cap, lower, upper)
            if spread is not None:
                return spread
        return self._solve(scores, cap, lower, upper)

    def _solve(
        self, scores: FloatArray, cap: IntArray, lower: IntArray, upper: IntArray
    ) -> BoolArray:
        if self.solver != "fast" and scores.size <= SMALL_PROBLEM_PAIRS:
            # One LP over every pair: for a round's few clients this is ~1 ms, where the
            # candidate pricing built for large fleets costs ~20 ms. Same optimum.
            return solve_exact(scores, cap, lower, upper, pad=scores.shape[1])
        return solve(scores, cap, lower, upper, method=self.solver)

    def _solve_spread(
        self, scores: FloatArray, cap: IntArray, lower: IntArray, upper: IntArray
    ) -> BoolArray | None:
        """Every client's first expert before anyone's second: solve with capacity 1, then
        fill the rest; None when the first stage leaves the bounds unreachable."""
        first = self._solve(scores, np.minimum(cap, 1), np.zeros_like(lower), upper)
        taken = first.sum(axis=0)
        cap2 = cap - first.sum(axis=1)
        lower2 = np.maximum(lower - taken, 0)
        upper2 = upper - taken
        try:
            check_feasible(cap2, lower2, upper2)
        except InfeasibleAssignmentError:
            return None
        rest_scores = np.where(first, -1e6, scores)
        rest = self._solve(rest_scores, cap2, lower2, upper2)
        if (rest & first).any():
            return None
        out: BoolArray = rest | first
        return out


class RandomStrategy(MatchingStrategy):
    """Each client gets min(k_c, E) distinct experts uniformly at random."""

    name: ClassVar[str] = "random"

    def assign(self, problem: MatchingInput, rng: np.random.Generator) -> BoolArray:
        """Random distinct experts, exactly min(k_c, E) per client."""
        keys = rng.random((problem.num_clients, problem.num_experts))
        return _first_k(np.argsort(keys, axis=1), _baseline_capacity(problem))


class AffinityStrategy(MatchingStrategy):
    """Each client gets its top-min(k_c, E) experts by gate affinity A (ties at random).

    No load term and no capability term: the greedy "go where your data routes" baseline.
    """

    name: ClassVar[str] = "affinity"

    def assign(self, problem: MatchingInput, rng: np.random.Generator) -> BoolArray:
        """Top-k_c by affinity, exactly min(k_c, E) per client."""
        a = np.asarray(problem.affinity, dtype=np.float64)
        tiebreak = rng.random(a.shape)
        order = np.lexsort((tiebreak, -a), axis=1)
        return _first_k(order, _baseline_capacity(problem))


class LeastLoadedStrategy(MatchingStrategy):
    """Round-robin: each client in turn takes the k_c experts with the fewest clients so far
    this round, ties broken by fewer clients in the load history (`expert_clients`), then by
    index. Clients take their turns in a random order.

    Taking turns this way is a cyclic walk over the experts sorted by history: a client whose
    turn starts at position p gets positions p .. p + k_c − 1 (mod E), so the whole round is
    vectorised and every expert's count differs from any other's by at most one.
    """

    name: ClassVar[str] = "least-loaded"

    def assign(self, problem: MatchingInput, rng: np.random.Generator) -> BoolArray:
        """Round-robin by load, exactly min(k_c, E) per client."""
        c, e = problem.num_clients, problem.num_experts
        k = _baseline_capacity(problem)
        history = np.asarray(problem.expert_clients, dtype=np.float64)
        cycle = np.lexsort((np.arange(e), history))
        turn = rng.permutation(c)
        start = np.zeros(c, dtype=np.int64)
        start[turn] = np.cumsum(k[turn]) - k[turn]  # exclusive prefix sum over the turns
        pos = (start[:, None] + np.arange(e)[None, :]) % e
        return _first_k(cycle[pos], k)


def _registry() -> Mapping[str, type[MatchingStrategy]]:
    # The peers subclass the baselines above, so they are imported once those exist.
    from moe.matching.feasible import (
        AffinityFeasibleStrategy,
        LeastLoadedFeasibleStrategy,
        RandomFeasibleStrategy,
    )
    from moe.matching.flexmoe import FlexMoEStrategy
    from moe.matching.oort import OortStrategy

    return MappingProxyType(
        {
            cls.name: cls
            for cls in (
                FitnessStrategy,
                RandomFeasibleStrategy,
                LeastLoadedFeasibleStrategy,
                AffinityFeasibleStrategy,
                OortStrategy,
                FlexMoEStrategy,
                RandomStrategy,
                AffinityStrategy,
                LeastLoadedStrategy,
            )
        }
    )


_STRATEGIES = _registry()

STRATEGY_NAMES: tuple[str, ...] = tuple(_STRATEGIES)


def make_strategy(name: str, **kwargs: object) -> MatchingStrategy:
    """Build a strategy by name (`STRATEGY_NAMES`) with its defaults.

    Args:
        name: the strategy's name.
        **kwargs: constructor arguments (only "fitness" takes any).

    Raises:
        ValueError: unknown name, or arguments for a strategy that takes none.
    """
    try:
        cls = _STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown matching strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}"
        ) from None
    if cls is FitnessStrategy:
        return FitnessStrategy(**kwargs)  # type: ignore[arg-type]
    if kwargs:
        raise ValueError(f"strategy {name!r} takes no arguments, got {sorted(kwargs)}")
    return cls()
