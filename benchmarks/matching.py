"""Benchmark of the assignment solvers: time and objective, exact vs fast, up to 10^6 clients.

    python -m benchmarks.matching [--quick | --large] [--seed N] [--repeats N] [--exact-max-pairs N]

Prints one JSON line per (fleet, solver) in the benchmarks' common form
`{"benchmark": "matching", "figure": "objective", "unit": "score", "value", "ceiling", "ratio",
...}`: `value` is the assignment's objective, `ceiling` D an LP-duality upper bound on the
optimum (`solvers.dual_bound`), `ratio` = value / D (so 1 − ratio bounds the true gap from
above at every size). Beside them: `seconds` (the solver alone, scores given; the best of
`--repeats` runs for the fast path), `scores_seconds` (building the fitness scores, once),
`gap_vs_exact` = (exact − fast) / |exact| (0.0 for the exact row, null where exact was skipped
because the fleet has more than `--exact-max-pairs` client–expert pairs) and `gap_vs_bound` =
(D − objective) / |objective|. Every answer is checked against every constraint before it is
reported. `--large` runs 10^6 clients × 256 experts and 10^5 × 1,024;
`peak_rss_mb` says what the process held at most so far.

Instances are what `FitnessStrategy` would solve on a realistic round: affinity rows drawn
from a Dirichlet around a skewed expert popularity (a few experts are wanted by most devices),
measured quality for a third of the pairs (affinity plus noise), capability, a load history
that follows the popularity, capacities k_c ∈ {1, 2, 3} with some devices limited further by
the deadline, the default fitness weights, and the strategy's bounds (U_e = ⌈1.5·Σcap/E⌉,
L_e = 1).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from benchmarks.cpu import usable_cpus
from moe.matching.base import MatchingInput
from moe.matching.fitness import effective_capacity, fitness_scores
from moe.matching.solvers import (
    check_assignment,
    dual_bound,
    objective,
    solve_exact,
    solve_fast,
)
from moe.matching.strategies import FitnessStrategy

FULL_SIZES: tuple[tuple[int, int], ...] = (
    (1_000, 64),
    (10_000, 64),
    (10_000, 256),
    (100_000, 64),
    (100_000, 256),
)
QUICK_SIZES: tuple[tuple[int, int], ...] = ((1_000, 64), (10_000, 64))
LARGE_SIZES: tuple[tuple[int, int], ...] = ((100_000, 1_024), (1_000_000, 256))

Instance = tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]
Solver = Callable[..., NDArray[np.bool_]]


def make_instance(clients: int, experts: int, seed: int) -> tuple[Instance, float]:
    """(scores, capacities, lower, upper) of one realistic round (see the module docstring),
    and the seconds spent building the fitness scores."""
    rng = np.random.default_rng(seed)
    popularity = rng.dirichlet(np.full(experts, 0.5)) * experts
    affinity = rng.dirichlet(0.3 * popularity + 0.05, size=clients)
    measured = rng.random((clients, experts)) < 1 / 3
    a_norm = affinity / affinity.max(axis=1, keepdims=True)
    quality = np.where(
        measured, np.clip(a_norm + rng.normal(0.0, 0.15, (clients, experts)), 0.0, 1.0), np.nan
    )
    capacity = rng.integers(1, 4, size=clients)
    deadline = np.where(rng.random(clients) < 0.1, rng.integers(0, 3, size=clients), capacity)
    mean_load = float(capacity.mean()) * clients / experts
    problem = MatchingInput(
        round=10,
        capacity=capacity,
        deadline_capacity=deadline,
        affinity=affinity,
        quality=quality,
        capability=rng.random(clients),
        expert_clients=mean_load * popularity / popularity.mean(),
        expert_samples=100.0 * popularity * rng.random(experts),
        rounds_since_update=rng.integers(0, 4, size=experts),
        lower=np.zeros(experts, dtype=np.int64),
        upper=np.full(experts, clients, dtype=np.int64),
        trials=measured.astype(np.int64),
    )
    cap = effective_capacity(problem)
    # The slack policy: the instance the solver figures were measured on.
    lower, upper = FitnessStrategy(equal_load=False, spread=False).bounds(problem, cap)
    del affinity, measured, a_norm, quality
    t0 = time.perf_counter()
    scores = fitness_scores(problem)
    return (scores, cap, lower, upper), time.perf_counter() - t0


def _timed(solver: Solver, inst: Instance, repeats: int) -> tuple[float, NDArray[np.bool_]]:
    best = float("inf")
    x: NDArray[np.bool_] | None = None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        x = solver(*inst)
        best = min(best, time.perf_counter() - t0)
    assert x is not None
    check_assignment(x, inst[1], inst[2], inst[3])
    return best, x


def run(
    sizes: Sequence[tuple[int, int]], *, seed: int, repeats: int, exact_max_pairs: int
) -> list[dict[str, object]]:
    """Benchmark every size; print and return one record per (size, solver)."""
    records: list[dict[str, object]] = []

    def emit(
        c: int, e: int, solver: str, seconds: float, obj: float, gap: float | None, bound: float
    ) -> None:
        rec: dict[str, object] = {
            "benchmark": "matching",
            "figure": "objective",
            "unit": "score",
            "value": round(obj, 4),
            "ceiling": round(bound, 4),
            "ratio": round(obj / bound, 7) if bound else None,
            "clients": c,
            "experts": e,
            "solver": solver,
            "seconds": round(seconds, 4),
            "scores_seconds": round(scores_seconds, 4),
            "gap_vs_exact": None if gap is None else round(gap, 7),
            "gap_vs_bound": round((bound - obj) / abs(obj), 7),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "cpus": usable_cpus(),
        }
        records.append(rec)
        print(json.dumps(rec), flush=True)

    for c, e in sizes:
        inst, scores_seconds = make_instance(c, e, seed)
        bound = dual_bound(*inst)
        exact_obj: float | None = None
        if c * e <= exact_max_pairs:
            seconds, x = _timed(solve_exact, inst, 1)
            exact_obj = objective(inst[0], x)
            emit(c, e, "exact", seconds, exact_obj, 0.0, bound)
        seconds, x = _timed(solve_fast, inst, repeats)
        fast_obj = objective(inst[0], x)
        gap = None if exact_obj is None else (exact_obj - fast_obj) / abs(exact_obj)
        emit(c, e, "fast", seconds, fast_obj, gap, bound)
    return records


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    pairs = [item.lower().split("x") for item in text.split(",")]
    return [(int(c), int(e)) for c, e in pairs]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.matching", description=__doc__)
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="small fleets only (seconds)")
    sizes.add_argument("--large", action="store_true", help="10^6 x 256 and 10^5 x 1,024")
    sizes.add_argument(
        "--sizes", default=None, help="comma-separated CLIENTSxEXPERTS, e.g. 1000x64"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="fast-path runs; best is kept")
    parser.add_argument(
        "--exact-max-pairs",
        type=int,
        default=3_000_000,
        help="skip the exact solver above this many client-expert pairs",
    )
    args = parser.parse_args(argv)
    run(
        _parse_sizes(args.sizes)
        if args.sizes
        else QUICK_SIZES
        if args.quick
        else LARGE_SIZES
        if args.large
        else FULL_SIZES,
        seed=args.seed,
        repeats=args.repeats,
        exact_max_pairs=args.exact_max_pairs,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
