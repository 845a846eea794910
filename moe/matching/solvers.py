"""The capacity-constrained client–expert assignment (a bipartite b-matching), exact and fast.

Problem. Given scores F (C × E), client capacities cap_c and per-expert bounds L_e ≤ U_e:

    maximise Σ F(c,e)·x(c,e)  s.t.  Σ_e x(c,e) ≤ cap_c,  L_e ≤ Σ_c x(c,e) ≤ U_e,  x ∈ {0, 1}.

Capacity is an upper bound, not a quota: a client is left below its capacity only where every
further expert would add a non-positive score, or every expert it could add is at U_e (or a
lower bound elsewhere needs its slot). Pairs scoring ≤ 0 are taken only to meet a lower bound.

Feasibility (`check_feasible`): x exists iff L_e ≤ U_e for every e and, with L sorted in
decreasing order, Σ_{i<k} L_i ≤ Σ_c min(cap_c, k) for every k (Gale–Ryser: the k most demanding
experts need that many distinct slots, and one client gives at most one slot to each expert).
The k = 1 and k = E cases are the familiar "an expert needs more clients than can take it" and
"Σ L_e > Σ cap_c". Upper bounds never make the problem infeasible (capacity is ≤).

`solve_exact`: the constraint matrix (client rows, expert rows, x ≤ 1) is a bipartite incidence
matrix with bounds, which is totally unimodular, so a basic optimum of the LP relaxation is
integral. It solves the LP with HiGHS on a candidate subset of pairs (each client's best
cap + pad experts, each expert's best L_e + pad clients) and prices out the excluded pairs with
the LP duals (u_c per client, λ_e per expert): when F(c,e) − u_c − λ_e ≤ tol for every excluded
pair the subset optimum is optimal for the whole problem (an LP optimality certificate);
otherwise the violating pairs join the subset and it solves again (column generation). An LP
answer that is not integral (it should not be) is re-solved with `milp`.

`solve_fast`: vectorised, no LP. (1) Candidates: each client's best cap_max + pad experts by
score (a partition, not a sort). (2) Auction (Bertsekas-style, Jacobi, prices only rise): each
client takes its best cap_c candidates by F − λ with a positive value; an expert chosen by more
than U_e clients raises its price λ_e to just above the (U_e+1)-th largest margin among its
choosers (margin = the value of the expert minus the client's best alternative), so exactly U_e
keep it; the others move to their next candidate. Raised prices only push clients towards other
experts, so an expert that was full stays full, and at the end the prices certify near-optimality
(ε per assignment). (3) Fill: clients with free capacity take their best positive-scoring experts
that still have room (greedy proposal rounds, experts keep the best proposals). (4) Repair lower
bounds: for each expert below L_e, take the clients that gain most by adding it (into a free
slot) or by swapping it in for an expert that has more than its own L. Should that repair get
stuck (it needs a chain of swaps), the exact solver answers instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.optimize
import scipy.sparse
from numpy.typing import ArrayLike, NDArray

from moe.errors import InfeasibleAssignmentError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

SolverName = Literal["auto", "exact", "fast"]

# `solve(method="auto")` uses the exact solver up to this many (client, expert) pairs.
AUTO_EXACT_MAX_PAIRS = 200_000


@dataclass(frozen=True, eq=False)
class _Problem:
    scores: FloatArray
    cap: IntArray
    lower: IntArray
    upper: IntArray

    @property
    def shape(self) -> tuple[int, int]:
        c, e = self.scores.shape
        return int(c), int(e)


def _prepare(scores: ArrayLike, cap: ArrayLike, lower: ArrayLike, upper: ArrayLike) -> _Problem:
    """Validate shapes and values; clip capacities to E and upper bounds to C."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (C, E), got shape {s.shape}")
    c, e = s.shape
    if e == 0:
        raise ValueError("scores must have at least one expert column")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (no NaN or inf)")
    k = np.asarray(cap, dtype=np.int64)
    lo = np.asarray(lower, dtype=np.int64)
    up = np.asarray(upper, dtype=np.int64)
    for name, arr, n in (("cap", k, c), ("lower", lo, e), ("upper", up, e)):
        if arr.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
        if (arr < 0).any():
            raise ValueError(f"{name} must be >= 0")
    # A client trains an expert at most once, and an expert has at most C clients: clipping
    # keeps the arithmetic tight without changing the feasible set.
    return _Problem(s, np.minimum(k, e), lo, np.minimum(up, c))


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


# --------------------------------------------------------------------------------------------
# exact


@dataclass(frozen=True, eq=False)
class _LPResult:
    x: FloatArray  # value per candidate pair
    client_dual: FloatArray  # u_c >= 0
    expert_dual: FloatArray  # λ_e = α_e − β_e (upper-bound price minus lower-bound price)


def _solve_restricted(p: _Problem, rows: IntArray, cols: IntArray) -> _LPResult | None:
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


def _initial_candidates(p: _Problem, pad: int, sample: int) -> BoolArray:
    c, e = p.shape
    m = min(e, int(p.cap.max(initial=0)) + pad)
    mask = _top_m_mask(p.scores, m)
    if m < e:
        # Where the clients displaced from scarce experts go: their best by F − λ̂.
        price = _discover_prices(p, _default_eps(p), 1000, sample)
        if price.any():
            mask |= _top_m_mask(p.scores - price[None, :], m)
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
    p = _prepare(scores, cap, lower, upper)
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
        # reveal one more violator per round: take every pair within the worst violation.
        mask |= reduced > -worst
    rows, cols = np.nonzero(np.ones((c, e), dtype=bool))
    lp = _solve_restricted(p, rows.astype(np.int64), cols.astype(np.int64))
    if lp is None:  # check_feasible is exact, so this means a solver problem
        raise InfeasibleAssignmentError("the LP over all pairs is infeasible")
    return (lp.x > 0.5).reshape(c, e)


# --------------------------------------------------------------------------------------------
# fast


def _top_m_mask(scores: FloatArray, m: int) -> BoolArray:
    """Exactly min(m, E) True per row, at the row's largest scores (ties: lowest index)."""
    c, e = scores.shape
    if m >= e:
        return np.ones((c, e), dtype=bool)
    if m <= 0 or c == 0:
        return np.zeros((c, e), dtype=bool)
    # A partition finds each row's m-th largest value in O(E); ">= threshold" is then exact
    # up to ties, which are cut back to m in index order for the few rows that have them.
    thr = np.partition(scores, e - m, axis=1)[:, e - m]
    mask = scores >= thr[:, None]
    over = np.flatnonzero(mask.sum(axis=1) > m)
    if over.size:
        sub = scores[over]
        t = thr[over][:, None]
        gt = sub > t
        eq = sub == t
        room = m - gt.sum(axis=1)
        mask[over] = gt | (eq & (np.cumsum(eq, axis=1) <= room[:, None]))
    return mask


def _candidates(scores: FloatArray, key: FloatArray, m: int) -> tuple[IntArray, FloatArray]:
    """Each row's m best experts by `key`: (experts, their `scores`), both (C, m)."""
    c = scores.shape[0]
    rows, cols = np.nonzero(_top_m_mask(key, m))
    return cols.astype(np.int64).reshape(c, m), scores[rows, cols].reshape(c, m)


@dataclass(eq=False)
class _Auction:
    """Mutable working state of one `solve_fast` call (never escapes it)."""

    cand_e: IntArray  # (C, m) candidate experts per client
    cand_s: FloatArray  # (C, m) their scores
    cap: IntArray  # (C,)
    kmax: int
    price: FloatArray  # (E,)
    chosen: IntArray  # (C, kmax) chosen experts, -1 = empty slot
    margin: FloatArray  # (C, kmax) value of the chosen expert over the best alternative
    counts: IntArray  # (E,) clients per expert

    def evaluate(self, rows: IntArray) -> None:
        """Let `rows` re-choose their best candidates at the current prices."""
        if rows.size == 0:
            return
        m = self.cand_e.shape[1]
        ce = self.cand_e[rows]
        adj = self.cand_s[rows] - self.price[ce]
        if m > self.kmax + 1:
            # Only the best kmax + 1 matter (the choice and the best alternative): partition
            # first, so wide rows (every expert a candidate) cost O(m), not O(m log m).
            m = self.kmax + 1
            top = np.argpartition(-adj, m - 1, axis=1)[:, :m]
            adj = np.take_along_axis(adj, top, axis=1)
            ce = np.take_along_axis(ce, top, axis=1)
        order = np.argsort(-adj, axis=1, kind="stable")
        adj_s = np.take_along_axis(adj, order, axis=1)
        e_s = np.take_along_axis(ce, order, axis=1)
        k = self.cap[rows]
        idx = np.arange(rows.size)
        alt = np.where(k < m, adj_s[idx, np.minimum(k, m - 1)], 0.0)
        alt = np.maximum(alt, 0.0)  # an empty slot is worth 0 (free disposal)
        kmax = self.kmax
        take = (np.arange(kmax)[None, :] < k[:, None]) & (adj_s[:, :kmax] > 0.0)
        new = np.where(take, e_s[:, :kmax], -1)
        old = self.chosen[rows]
        e = self.counts.shape[0]
        self.counts -= np.bincount(old[old >= 0], minlength=e)
        self.counts += np.bincount(new[new >= 0], minlength=e)
        self.chosen[rows] = new
        self.margin[rows] = np.where(take, adj_s[:, :kmax] - alt[:, None], 0.0)

    def run(self, upper: IntArray, eps: float, max_iters: int, tail: int) -> None:
        """Raise the prices of over-subscribed experts until at most `tail` clients are over
        the upper bounds (or max_iters), then trim those."""
        e = self.counts.shape[0]
        self.evaluate(np.arange(self.cand_e.shape[0]))
        for _ in range(max_iters):
            over = self.counts > upper
            if int((self.counts - upper)[over].sum()) <= tail:
                break
            rows, slots, ex, order, starts = self._choosers(over)
            ro, so, eo = rows[order], slots[order], ex[order]
            rank = np.arange(order.size) - starts[eo]
            mg = self.margin[ro, so]
            # The (U_e+1)-th largest margin, plus ε: exactly the first U_e choosers keep e.
            at_cut = rank == upper[eo]
            delta = np.zeros(e, dtype=np.float64)
            delta[eo[at_cut]] = mg[at_cut] + eps
            self.price += delta
            stay = ~(rank >= upper[eo])
            # Stayers keep the expert; their margin shrinks by the raise (a lower bound on the
            # true margin, since their alternatives only get dearer).
            self.margin[ro[stay], so[stay]] -= delta[eo[stay]]
            self.evaluate(np.unique(ro[~stay]))
        self._trim(upper)

    def _choosers(
        self, experts: BoolArray
    ) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray]:
        """(client, slot, expert) of every choice of a flagged expert, grouped by expert with
        margins descending: the sort order and each expert's group start."""
        e = experts.shape[0]
        flag = np.append(experts, False)  # index -1 (empty slot) reads False
        rows, slots = np.nonzero(flag[self.chosen])
        ex = self.chosen[rows, slots]
        mg = self.margin[rows, slots]
        # One float sort on (expert, −margin) is ~3× faster than lexsort; the key spacing
        # exceeds the margin range, so groups never mix.
        span = float(mg.max(initial=0.0) - mg.min(initial=0.0)) + 1.0
        order = np.argsort(ex * span - mg)
        counts = np.bincount(ex, minlength=e)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return rows, slots, ex, order, starts

    def _trim(self, upper: IntArray) -> None:
        over = self.counts > upper
        if not over.any():
            return
        rows, slots, ex, order, starts = self._choosers(over)
        rank = np.arange(order.size) - starts[ex[order]]
        drop = rank >= upper[ex[order]]
        r, s = rows[order][drop], slots[order][drop]
        self.chosen[r, s] = -1
        self.margin[r, s] = 0.0
        self.counts -= np.bincount(ex[order][drop], minlength=self.counts.shape[0])


def _fill(p: _Problem, x: BoolArray, counts: IntArray) -> None:
    """Give clients with free capacity their best positive experts that still have room.

    Greedy proposal rounds: each such client proposes its best remaining expert; each expert
    keeps the best proposals up to its room. In place on x and counts.
    """
    e = p.shape[1]
    nchosen = x.sum(axis=1)
    while True:
        rows = np.flatnonzero(nchosen < p.cap)
        room = p.upper - counts
        if rows.size == 0 or not (room > 0).any():
            return
        sub = np.where(x[rows] | (room <= 0)[None, :], -np.inf, p.scores[rows])
        best = np.argmax(sub, axis=1)
        val = sub[np.arange(rows.size), best]
        ok = val > 0.0
        if not ok.any():
            return
        rows, best, val = rows[ok], best[ok], val[ok]
        order = np.lexsort((-val, best))
        sizes = np.bincount(best, minlength=e)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        rank = np.arange(order.size) - starts[best[order]]
        acc = order[rank < room[best[order]]]
        x[rows[acc], best[acc]] = True
        nchosen[rows[acc]] += 1
        counts += np.bincount(best[acc], minlength=e)


def _repair_lower(p: _Problem, x: BoolArray, counts: IntArray) -> bool:
    """Raise every expert to its floor L_e by adding or swapping it in. In place.

    Returns:
        False when some floor cannot be met this way (a chain of swaps would be needed).
    """
    c, e = p.shape
    nchosen = x.sum(axis=1)
    for j in np.argsort(counts - p.lower):
        while counts[j] < p.lower[j]:
            need = int(p.lower[j] - counts[j])
            col = p.scores[:, j]
            free = (nchosen < p.cap) & ~x[:, j]
            gain_add = np.where(free, col, -np.inf)
            # Swap: give up the client's worst expert among those above their floor.
            donor_ok = x & (counts > p.lower)[None, :]
            donor_ok[:, j] = False
            worst = np.where(donor_ok, p.scores, np.inf)
            donor = np.argmin(worst, axis=1)
            loss = worst[np.arange(c), donor]
            gain_swap = np.where(~x[:, j] & np.isfinite(loss), col - loss, -np.inf)
            gain = np.maximum(gain_add, gain_swap)
            cand = np.flatnonzero(np.isfinite(gain))
            if cand.size == 0:
                return False
            cand = cand[np.argsort(-gain[cand], kind="stable")]
            is_swap = gain_swap[cand] > gain_add[cand]
            # Each donor may give up only what it holds above its floor.
            d = np.where(is_swap, donor[cand], e)
            budget = np.append(counts - p.lower, c)
            order = np.argsort(d, kind="stable")
            sizes = np.bincount(d, minlength=e + 1)
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            rank = np.empty_like(order)
            rank[order] = np.arange(order.size) - starts[d[order]]
            ok = rank < budget[d]
            take = cand[ok][:need]
            swap = is_swap[ok][:need]
            x[take, j] = True
            counts[j] += take.size
            donors = donor[take[swap]]
            x[take[swap], donors] = False
            np.subtract.at(counts, donors, 1)
            nchosen[take[~swap]] += 1
    return True


def _run(
    cand_e: IntArray,
    cand_s: FloatArray,
    cap: IntArray,
    upper: IntArray,
    eps: float,
    max_iters: int,
    tail: int,
    price: FloatArray | None = None,
) -> _Auction:
    c = cand_e.shape[0]
    kmax = int(cap.max(initial=0))
    auction = _Auction(
        cand_e=cand_e,
        cand_s=cand_s,
        cap=cap,
        kmax=kmax,
        price=np.zeros(upper.shape[0]) if price is None else price.copy(),
        chosen=np.full((c, kmax), -1, dtype=np.int64),
        margin=np.zeros((c, kmax)),
        counts=np.zeros(upper.shape[0], dtype=np.int64),
    )
    auction.run(upper, eps, max_iters, tail)
    return auction


def _default_eps(p: _Problem) -> float:
    return 3e-3 * max(float(p.scores.max() - p.scores.min()), 1e-12)


def _discover_prices(p: _Problem, eps: float, max_iters: int, sample: int) -> FloatArray:
    """Approximate optimal expert prices λ* from an auction on a subset of the clients.

    The subset is evenly spaced (stratified when clients come sorted by type), every expert is
    a candidate, and U_e is scaled to the subset's share; lower bounds are left out (prices
    only have to say which experts are scarce).
    """
    c, e = p.shape
    if c == 0 or sample <= 0:
        return np.zeros(e)
    sub = np.unique(np.linspace(0, c - 1, min(c, sample)).astype(np.int64))
    sub_upper = np.ceil(p.upper * (sub.size / c) - 1e-9).astype(np.int64)
    every = np.broadcast_to(np.arange(e, dtype=np.int64), (sub.size, e)).copy()
    # Its tail of single displacements barely moves prices: cut it at 0.2% of the slots.
    tail = int(2e-3 * float(p.cap[sub].sum()))
    return _run(every, p.scores[sub], p.cap[sub], sub_upper, eps, max_iters, tail).price


def solve_fast(
    scores: ArrayLike,
    cap: ArrayLike,
    lower: ArrayLike,
    upper: ArrayLike,
    *,
    pad: int = 4,
    eps: float | None = None,
    max_iters: int = 1000,
    tail: float = 1e-4,
    sample: int = 4000,
    warm: float = 0.5,
) -> BoolArray:
    """A near-optimal assignment for large fleets: candidates, auction, fill, floor repair.

    Args:
        scores: (C, E) finite scores F(c, e).
        cap: (C,) client capacities (clipped to E).
        lower: (E,) per-expert minimum clients.
        upper: (E,) per-expert maximum clients.
        pad: candidates per client beyond the largest capacity (more: closer to optimal when
            many clients want the same experts, slower).
        eps: auction price step above the displaced margin; default 1e-4 × the score range.
            The objective is within ε per assignment of the candidate-restricted optimum.
        max_iters: auction rounds before over-subscribed experts are trimmed to U_e.
        tail: the auction stops once the clients over all upper bounds are at most this
            fraction of the capacity; those few are trimmed and placed by the greedy fill.
            (An auction's last rounds are long chains of single displacements.)

    Returns:
        x (C, E) bool respecting every constraint.

    Raises:
        moe.errors.InfeasibleAssignmentError: the bounds admit no assignment.
        ValueError: malformed input.
    """
    p = _prepare(scores, cap, lower, upper)
    check_feasible(p.cap, p.lower, p.upper)
    c, e = p.shape
    kmax = int(p.cap.max(initial=0))
    if c == 0 or kmax == 0:
        return np.zeros((c, e), dtype=bool)
    m = min(e, kmax + pad)
    if eps is None:
        eps = _default_eps(p)
    tail_n = int(tail * float(p.cap.sum()))
    price = _discover_prices(p, eps, max_iters, sample) if m < e else np.zeros(e)
    # By complementary slackness a client's optimal experts are among its best by F − λ*.
    key = p.scores - price[None, :] if price.any() else p.scores
    cand_e, cand_s = _candidates(p.scores, key, m)
    auction = _run(cand_e, cand_s, p.cap, p.upper, eps, max_iters, tail_n, warm * price)
    x = np.zeros((c, e), dtype=bool)
    r, sl = np.nonzero(auction.chosen >= 0)
    x[r, auction.chosen[r, sl]] = True
    counts = auction.counts.copy()
    _fill(p, x, counts)
    if (counts < p.lower).any() and not _repair_lower(p, x, counts):
        return solve_exact(p.scores, p.cap, p.lower, p.upper)
    return x


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
