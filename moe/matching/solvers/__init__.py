"""The capacity-constrained client–expert assignment (a bipartite b-matching), exact and fast.

Problem. Given scores F (C × E), client capacities cap_c and per-expert bounds L_e ≤ U_e:

    maximise Σ F(c,e)·x(c,e)  s.t.  Σ_e x(c,e) ≤ cap_c,  L_e ≤ Σ_c x(c,e) ≤ U_e,  x ∈ {0, 1}.

Capacity is an upper bound, not a quota: a client is left below its capacity only where every
further expert would add a non-positive score, or every expert it could add is at U_e (or a
lower bound elsewhere needs its slot). Pairs scoring ≤ 0 are taken only to meet a lower bound.

One module per part, bottom up:

- `problem`: the validated inputs (`Problem`, `prepare`) and array types.
- `feasibility`: `check_feasible` (Gale–Ryser), `assignment_violations`, `check_assignment`,
  `objective`.
- `auction`: the auction on expert prices and its price discovery; `dual_bound`.
- `exact`: `solve_exact`, LP (HiGHS) with column generation.
- `fast`: `solve_fast`, the auction on every client's candidates, then fill and floor repair.

`solve` picks one by `method` ("auto": exact up to `AUTO_EXACT_MAX_PAIRS` pairs).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from moe.matching.solvers.auction import dual_bound
from moe.matching.solvers.exact import solve_exact
from moe.matching.solvers.fast import solve_fast
from moe.matching.solvers.feasibility import (
    assignment_violations,
    check_assignment,
    check_feasible,
    objective,
)
from moe.matching.solvers.problem import BoolArray, FloatArray, IntArray

__all__ = [
    "AUTO_EXACT_MAX_PAIRS",
    "BoolArray",
    "FloatArray",
    "IntArray",
    "SolverName",
    "assignment_violations",
    "check_assignment",
    "check_feasible",
    "dual_bound",
    "objective",
    "solve",
    "solve_exact",
    "solve_fast",
]

SolverName = Literal["auto", "exact", "fast"]

# `solve(method="auto")` uses the exact solver up to this many (client, expert) pairs.
AUTO_EXACT_MAX_PAIRS = 200_000


def solve(
    scores: ArrayLike,
    cap: ArrayLike,
    lower: ArrayLike,
    upper: ArrayLike,
    *,
    method: SolverName = "auto",
) -> BoolArray:
    """Solve with `method`: "exact", "fast", or "auto" (exact up to AUTO_EXACT_MAX_PAIRS)."""
    if method == "exact":
        return solve_exact(scores, cap, lower, upper)
    if method == "fast":
        return solve_fast(scores, cap, lower, upper)
    if method != "auto":
        raise ValueError(f"unknown solver method {method!r}")
    size = int(np.size(scores))
    if size <= AUTO_EXACT_MAX_PAIRS:
        return solve_exact(scores, cap, lower, upper)
    return solve_fast(scores, cap, lower, upper)
