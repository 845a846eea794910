"""Feasibility of the bounds, and checks and the objective of an assignment.

Feasibility (`check_feasible`): x exists iff L_e ≤ U_e for every e and, with L sorted in
decreasing order, Σ_{i<k} L_i ≤ Σ_c min(cap_c, k) for every k (Gale–Ryser: the k most demanding
experts need that many distinct slots, and one client gives at most one slot to each expert).
The k = 1 and k = E cases are the familiar "an expert needs more clients than can take it" and
"Σ L_e > Σ cap_c". Upper bounds never make the problem infeasible (capacity is ≤).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from moe.errors import InfeasibleAssignmentError


def check_feasible(cap: ArrayLike, lower: ArrayLike, upper: ArrayLike) -> None:
    """Raise InfeasibleAssignmentError (with the reason) when no assignment exists.

    Args:
        cap: (C,) client capacities.
        lower: (E,) per-expert minimum clients.
        upper: (E,) per-expert maximum clients.

    Raises:
        moe.errors.InfeasibleAssignmentError: no 0/1 matrix meets the bounds.
        ValueError: malformed input.
    """
    k = np.asarray(cap, dtype=np.int64)
    lo = np.asarray(lower, dtype=np.int64)
    up = np.asarray(upper, dtype=np.int64)
    if k.ndim != 1 or lo.ndim != 1 or lo.shape != up.shape:
        raise ValueError("cap must be (C,), lower and upper (E,)")
    if (k < 0).any() or (lo < 0).any() or (up < 0).any():
        raise ValueError("cap, lower and upper must be >= 0")
    n_experts = int(lo.shape[0])
    n_clients = int(k.shape[0])
    bad = np.flatnonzero(lo > np.minimum(up, n_clients))
    if bad.size:
        e = int(bad[0])
        raise InfeasibleAssignmentError(
            f"expert {e} needs at least {lo[e]} clients but may take at most "
            f"{min(int(up[e]), n_clients)} (upper bound {up[e]}, {n_clients} clients)"
        )
    if n_experts == 0 or not lo.any():
        return
    kk = np.minimum(k, n_experts)
    # slots[j-1] = clients with capacity >= j; g[k-1] = Σ_c min(cap_c, k) = Σ_{j<=k} slots[j-1].
    hist = np.bincount(kk, minlength=n_experts + 1)
    slots = n_clients - np.cumsum(hist)[:-1]
    g = np.cumsum(slots)
    need = np.cumsum(np.sort(lo)[::-1])
    short = np.flatnonzero(need > g)
    if not short.size:
        return
    j = int(short[0])
    if j == 0:
        e = int(np.argmax(lo))
        raise InfeasibleAssignmentError(
            f"expert {e} needs at least {lo[e]} clients but only {int(slots[0])} clients "
            "have any capacity"
        )
    if j == n_experts - 1 or need[-1] > g[-1]:
        raise InfeasibleAssignmentError(
            f"the experts' lower bounds need {int(need[-1])} client slots in total but the "
            f"clients offer only {int(kk.sum())} (Σ L_e > Σ cap_c)"
        )
    raise InfeasibleAssignmentError(
        f"the {j + 1} most demanding experts need {int(need[j])} clients in total, but a client "
        f"trains an expert at most once, so the clients can give those experts only {int(g[j])}"
    )


def assignment_violations(
    x: ArrayLike, cap: ArrayLike, lower: ArrayLike, upper: ArrayLike
) -> list[str]:
    """Every constraint the assignment breaks, as readable lines (empty when valid).

    Args:
        x: (C, E) assignment (bool or 0/1).
        cap: (C,) client capacities.
        lower: (E,) per-expert minimum clients.
        upper: (E,) per-expert maximum clients.
    """
    a = np.asarray(x)
    k = np.asarray(cap, dtype=np.int64)
    lo = np.asarray(lower, dtype=np.int64)
    up = np.asarray(upper, dtype=np.int64)
    if a.ndim != 2 or a.shape != (k.shape[0], lo.shape[0]) or lo.shape != up.shape:
        return [f"shape mismatch: x {a.shape}, cap {k.shape}, lower {lo.shape}, upper {up.shape}"]
    out: list[str] = []
    if a.dtype != np.bool_ and not np.isin(a, (0, 1)).all():
        out.append("x has entries other than 0/1")
    rows = a.astype(np.int64).sum(axis=1)
    cols = a.astype(np.int64).sum(axis=0)
    for c in np.flatnonzero(rows > k)[:5]:
        out.append(f"client {c} has {rows[c]} experts, capacity {k[c]}")
    for e in np.flatnonzero(cols > up)[:5]:
        out.append(f"expert {e} has {cols[e]} clients, upper bound {up[e]}")
    for e in np.flatnonzero(cols < lo)[:5]:
        out.append(f"expert {e} has {cols[e]} clients, lower bound {lo[e]}")
    return out


def check_assignment(x: ArrayLike, cap: ArrayLike, lower: ArrayLike, upper: ArrayLike) -> None:
    """Raise ValueError listing the violated constraints, if any (see `assignment_violations`)."""
    problems = assignment_violations(x, cap, lower, upper)
    if problems:
        raise ValueError("invalid assignment: " + "; ".join(problems))


def objective(scores: ArrayLike, x: ArrayLike) -> float:
    """Σ F·x of an assignment."""
    return float(np.asarray(scores, dtype=np.float64)[np.asarray(x, dtype=bool)].sum())
