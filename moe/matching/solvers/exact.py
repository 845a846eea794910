"""`solve_exact`: an optimal assignment by LP with column generation.

The constraint matrix (client rows, expert rows, x ≤ 1) is a bipartite incidence
matrix with bounds, which is totally unimodular, so a basic optimum of the LP relaxation is
integral. It solves the LP with HiGHS on a candidate subset of pairs (each client's best
cap + pad experts by F and by F − λ̂, with λ̂ the prices of a sampled auction, see `auction`; each
expert's best L_e + pad clients) and prices out the excluded pairs with the LP duals (u_c per
client, λ_e per expert): when F(c,e) − u_c − λ_e ≤ tol for every excluded pair, the subset
optimum is optimal for the whole problem (an LP optimality certificate); otherwise the
violating pairs join the subset and it solves again (column generation). An LP answer that is
not integral (it should not be) is re-solved with `milp` over the same pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize
import scipy.sparse
from numpy.typing import ArrayLike

from moe.errors import InfeasibleAssignmentError
from moe.matching.solvers.auction import default_eps, discover_prices, top_m_mask
from moe.matching.solvers.feasibility import check_feasible
from moe.matching.solvers.problem import BoolArray, FloatArray, IntArray, Problem, prepare


@dataclass(frozen=True, eq=False)
class _LPResult:
    x: FloatArray  # value per candidate pair
    client_dual: FloatArray  # u_c >= 0
    expert_dual: FloatArray  # λ_e = α_e − β_e (upper-bound price minus lower-bound price)


def _solve_restricted(p: Problem, rows: IntArray, cols: IntArray) -> _LPResult | None:
    """The LP over the candidate pairs (rows[i], cols[i]); None when it is infeasible."""
    c, e = p.shape
    n = int(rows.shape[0])
    var = np.arange(n)
    data = np.concatenate([np.ones(2 * n), -np.ones(n)])
    a_rows = np.concatenate([rows, c + cols, c + e + cols])
    a = scipy.sparse.csr_array(
        (data, (a_rows, np.concatenate([var, var, var]))), shape=(c + 2 * e, n)
    )
    b = np.concatenate([p.cap, p.upper, -p.lower]).astype(np.float64)
    res = scipy.optimize.linprog(
        -p.scores[rows, cols], A_ub=a, b_ub=b, bounds=(0.0, 1.0), method="highs"
    )
    if res.status == 2:  # infeasible
        return None
    if res.status != 0:
        raise RuntimeError(f"LP solver failed: {res.message}")
    # HiGHS marginals are ∂(min objective)/∂b ≤ 0; our objective is the negated one.
    m = -np.asarray(res.ineqlin.marginals, dtype=np.float64)
    x = np.asarray(res.x, dtype=np.float64)
    if np.abs(x - np.round(x)).max(initial=0.0) > 1e-6:
        # Total unimodularity makes a basic optimum integral; a non-basic (interior) answer is
        # re-solved as an integer program over the same pairs, which has the same optimum.
        ms = scipy.optimize.milp(
            -p.scores[rows, cols],
            integrality=np.ones(n),
            bounds=scipy.optimize.Bounds(0.0, 1.0),
            constraints=scipy.optimize.LinearConstraint(a, -np.inf, b),
        )
        if ms.status != 0:
            raise RuntimeError(f"MILP solver failed: {ms.message}")
        x = np.asarray(ms.x, dtype=np.float64)
    return _LPResult(np.round(x), m[:c], m[c : c + e] - m[c + e :])


def _initial_candidates(p: Problem, pad: int, sample: int) -> BoolArray:
    c, e = p.shape
    m = min(e, int(p.cap.max(initial=0)) + pad)
    mask = top_m_mask(p.scores, m)
    if m < e:
        # Where the clients displaced from scarce experts go: their best by F − λ̂.
        price = discover_prices(p, default_eps(p), 1000, sample)
        if price.any():
            mask |= top_m_mask(p.scores - price[None, :], m)
    for j in np.flatnonzero(p.lower > 0):
        # Each expert with a floor also sees its best clients, so the floor can be met.
        k = min(c, int(p.lower[j]) + pad)
        top = np.argpartition(p.scores[:, j], c - k)[c - k :] if k < c else np.arange(c)
        mask[top, j] = True
    return mask


def solve_exact(
    scores: ArrayLike,
    cap: ArrayLike,
    lower: ArrayLike,
    upper: ArrayLike,
    *,
    pad: int = 4,
    max_rounds: int = 20,
    sample: int = 4000,
) -> BoolArray:
    """An optimal assignment, by LP (HiGHS) with column generation over candidate pairs.

    Args:
        scores: (C, E) finite scores F(c, e).
        cap: (C,) client capacities (clipped to E).
        lower: (E,) per-expert minimum clients.
        upper: (E,) per-expert maximum clients.
        pad: candidates per client beyond the largest capacity in the first LP, both by
            score and by score minus the prices an auction on `sample` clients found.
        sample: clients in that price-discovery auction (0: candidates by score only).
        max_rounds: column-generation rounds before solving over every pair at once.

    Returns:
        x (C, E) bool, maximising Σ F·x under the constraints.

    Raises:
        moe.errors.InfeasibleAssignmentError: the bounds admit no assignment.
        ValueError: malformed input.
    """
    p = prepare(scores, cap, lower, upper)
    check_feasible(p.cap, p.lower, p.upper)
    c, e = p.shape
    if c == 0:
        return np.zeros((0, e), dtype=bool)
    mask = _initial_candidates(p, pad, sample)
    tol = 1e-7 * max(1.0, float(np.abs(p.scores).max()))
    for _ in range(max_rounds):
        rows, cols = np.nonzero(mask)
        lp = _solve_restricted(p, rows.astype(np.int64), cols.astype(np.int64))
        if lp is None:
            break  # the subset cannot meet the floors: solve over every pair
        reduced = np.where(mask, -np.inf, p.scores - lp.client_dual[:, None])
        reduced -= lp.expert_dual[None, :]
        worst = float(reduced.max())
        if worst <= tol:
            x = np.zeros((c, e), dtype=bool)
            x[rows, cols] = lp.x > 0.5
            return x
        # The duals are degenerate (not unique), so pricing in only the violators tends to
        # reveal one more violator per round: a client with a violator also brings its two
        # best-priced pairs, which measured here saves a round or two of re-solving.
        hit = np.flatnonzero((reduced > tol).any(axis=1))
        best2 = np.argpartition(-reduced[hit], min(2, e) - 1, axis=1)[:, : min(2, e)]
        mask[hit[:, None], best2] = True
        mask |= reduced > tol
    rows, cols = np.nonzero(np.ones((c, e), dtype=bool))
    lp = _solve_restricted(p, rows.astype(np.int64), cols.astype(np.int64))
    if lp is None:  # check_feasible is exact, so this means a solver problem
        raise InfeasibleAssignmentError("the LP over all pairs is infeasible")
    return (lp.x > 0.5).reshape(c, e)


# --------------------------------------------------------------------------------------------
# fast
