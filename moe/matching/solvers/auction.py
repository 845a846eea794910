"""The auction on expert prices behind `solve_fast`, its price discovery, and `dual_bound`.

Vectorised numpy, no LP: an auction (Bertsekas-style, Jacobi) on expert prices λ_e. Each
client takes its best cap_c candidates by F − λ that have a positive value. An expert chosen by
more than U_e clients raises its price to ε above the (U_e+1)-th largest margin among its
choosers (margin = the expert's value minus the client's best alternative), so U_e keep it
and the others move on; an expert below its floor L_e lowers its price (a subsidy) just enough
to attract the clients it lacks, those that give up least for it. While only raises happen, a
full expert stays full and the answer is within ε per assignment of the optimum over the
candidates. Subsidies and warm starts also move clients the other way, so prices that the
optimum would not keep (λ_e > 0 on an expert below U_e, λ_e < 0 on one above L_e) are moved
back towards 0 as well, for a bounded number of rounds.

`solve_exact` takes its candidate pairs partly from the discovered prices, and `dual_bound`
turns any prices into an upper bound on the optimum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from moe.matching.solvers.problem import BoolArray, FloatArray, IntArray, Problem, prepare


def top_m_mask(scores: FloatArray, m: int) -> BoolArray:
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


def top_candidates(scores: FloatArray, key: FloatArray, m: int) -> tuple[IntArray, FloatArray]:
    """Each row's m best experts by `key`: (experts, their `scores`), both (C, m)."""
    c = scores.shape[0]
    rows, cols = np.nonzero(top_m_mask(key, m))
    return cols.astype(np.int64).reshape(c, m), scores[rows, cols].reshape(c, m)


@dataclass(eq=False)
class Auction:
    """Mutable working state of one `solve_fast` call (never escapes it)."""

    cand_e: IntArray  # (C, m) candidate experts per client
    cand_s: FloatArray  # (C, m) their scores
    cap: IntArray  # (C,)
    kmax: int
    price: FloatArray  # (E,)
    chosen: IntArray  # (C, kmax) chosen experts, -1 = empty slot
    chosen_s: FloatArray  # (C, kmax) their scores (unused where the slot is empty)
    margin: FloatArray  # (C, kmax) value of the chosen expert over the best alternative
    counts: IntArray  # (E,) clients per expert
    stuck: BoolArray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # floors out of reach
    polish: int = 100  # rounds of consistency moves left

    def evaluate(self, rows: IntArray) -> None:
        """Let `rows` re-choose their best candidates at the current prices."""
        if rows.size == 0:
            return
        m = self.cand_e.shape[1]
        ce = self.cand_e[rows]
        cs = self.cand_s[rows]
        adj = cs - self.price[ce]
        if m > self.kmax + 1:
            # Only the best kmax + 1 matter (the choice and the best alternative): partition
            # first, so wide rows (every expert a candidate) cost O(m), not O(m log m).
            m = self.kmax + 1
            top = np.argpartition(-adj, m - 1, axis=1)[:, :m]
            adj = np.take_along_axis(adj, top, axis=1)
            ce = np.take_along_axis(ce, top, axis=1)
            cs = np.take_along_axis(cs, top, axis=1)
        order = np.argsort(-adj, axis=1, kind="stable")
        adj_s = np.take_along_axis(adj, order, axis=1)
        e_s = np.take_along_axis(ce, order, axis=1)
        s_s = np.take_along_axis(cs, order, axis=1)
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
        self.chosen_s[rows] = s_s[:, :kmax]
        self.margin[rows] = np.where(take, adj_s[:, :kmax] - alt[:, None], 0.0)

    def run(self, upper: IntArray, lower: IntArray, eps: float, max_iters: int, tail: int) -> None:
        """Move prices until every expert is within its bounds and priced consistently.

        Complementary slackness says λ_e > 0 only for a full expert (U_e clients) and λ_e < 0
        only for one held at its floor (L_e clients). A round raises the prices of experts
        over U_e (and, stopping at 0, of subsidised ones over L_e); when none is over, it
        lowers the prices of experts under L_e (and, stopping at 0, of priced ones under U_e).
        The consistency moves (the parts in parentheses) start only after a warm start or a
        subsidy, and get `self.polish` rounds. It stops when each kind of violation involves
        at most `tail` clients (floors: none) or a round moves nobody; what is still over
        U_e is trimmed.
        """
        e = self.counts.shape[0]
        self.evaluate(np.arange(self.cand_e.shape[0]))
        inf = np.full(e, np.inf)
        # Floors no candidate list can reach are left to the floor repair after the auction.
        self.stuck = np.zeros(e, dtype=bool)
        subsidised = bool((self.price != 0).any())  # a warm start may over-price too
        for _ in range(max_iters):
            n = self.counts
            over = n > upper
            shed = (self.price < 0) & (n > lower) & (n <= upper)
            under = (n < lower) & ~self.stuck
            slack = (self.price > 0) & (n < upper) & (n >= lower)
            # The last rounds are long chains of single moves: each kind of violation is let
            # be once at most `tail` clients are on the wrong side of its bounds.
            for kind, wrong in ((over, n - upper), (shed, n - lower), (slack, upper - n)):
                if int(wrong[kind].sum()) <= tail:
                    kind[:] = False
            # From zero prices without floors, prices only rise: a full expert stays full and
            # no price needs correcting. A warm start may over-price, and once a floor was
            # subsidised clients also move towards subsidised experts: then prices that the
            # optimum would not keep (shed, slack) are corrected too, for a bounded number of
            # rounds (near convergence Jacobi moves can ping-pong).
            if not subsidised or self.polish <= 0:
                shed[:] = slack[:] = False
            elif shed.any() or slack.any():
                self.polish -= 1
            if not (over.any() or shed.any() or under.any() or slack.any()):
                break
            # Raise first, lower only once nothing is over: lowering while others raise
            # sends both moves' clients to the same experts, and the prices ping-pong.
            if over.any() or shed.any():
                target = np.where(over, upper, lower)
                limit = np.where(shed, -self.price, inf)
                moved = self._raise(over | shed, target, limit, eps)
            else:
                target = np.where(under, lower, upper)
                limit = np.where(slack, self.price, inf)
                moved = self._lower(under | slack, target, limit, eps)
                subsidised |= moved and bool(under.any())
            if not moved:
                break
        self._trim(upper)

    def _raise(self, flag: BoolArray, target: IntArray, limit: FloatArray, eps: float) -> bool:
        """Raise flagged experts' prices so only `target` choosers keep each (by at most
        `limit`). Returns whether any client or price moved."""
        e = self.counts.shape[0]
        rows, slots, mg, starts, sizes = self._groups(flag)
        leave = np.zeros(rows.size, dtype=bool)
        delta = np.zeros(e, dtype=np.float64)
        for j in np.flatnonzero(flag):
            a, n = int(starts[j]), int(sizes[j])
            k = n - int(target[j])  # how many must leave
            if k <= 0:
                continue
            seg = mg[a : a + n]
            # The k smallest margins leave: a partition, not a sort (k ≪ n in practice).
            out = np.argpartition(seg, k - 1)[:k] if k < n else np.arange(n)
            d = float(seg[out].max()) + eps
            if d > limit[j]:
                d = float(limit[j])
                out = np.flatnonzero(seg < d)
            delta[j] = d
            leave[a + out] = True
        self.price += delta
        stay = ~leave
        # Stayers keep the expert; their margin shrinks by the raise (a lower bound on the
        # true margin while their alternatives only get dearer).
        ex = self.chosen[rows[stay], slots[stay]]
        self.margin[rows[stay], slots[stay]] -= delta[ex]
        movers = np.unique(rows[leave])
        self.evaluate(movers)
        return bool(movers.size) or bool(delta.any())

    def _lower(self, flag: BoolArray, target: IntArray, limit: FloatArray, eps: float) -> bool:
        """Lower flagged experts' prices just enough to attract the clients they lack up to
        `target` (those giving up least for it), by at most `limit`. Returns whether any
        client or price moved."""
        e = self.counts.shape[0]
        rows, slots = np.nonzero(np.append(flag, False)[self.cand_e])
        ex = self.cand_e[rows, slots]
        ch = self.chosen[rows]
        fresh = ~(ch == ex[:, None]).any(axis=1) & (self.cap[rows] > 0)
        rows, slots, ex, ch = rows[fresh], slots[fresh], ex[fresh], ch[fresh]
        value = self.cand_s[rows, slots] - self.price[ex]
        held = ch >= 0
        held_value = np.where(held, self.chosen_s[rows] - self.price[np.maximum(ch, 0)], np.inf)
        # A full client gives up its worst choice for e; one with a free slot gives up nothing.
        full = held.sum(axis=1) >= self.cap[rows]
        gap = np.maximum(np.where(full, held_value.min(axis=1), 0.0) - value, 0.0)
        span = float(gap.max(initial=0.0)) + 1.0
        order = np.argsort(ex * span + gap)
        ro, eo, go = rows[order], ex[order], gap[order]
        sizes = np.bincount(eo, minlength=e)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        rank = np.arange(order.size) - starts[eo]
        need = np.clip(np.minimum(target - self.counts, sizes), 0, None)
        at_cut = rank == need[eo] - 1
        delta = np.zeros(e, dtype=np.float64)
        delta[eo[at_cut]] = go[at_cut] + eps
        # Where the limit binds, fewer clients come (those with a smaller gap). A priced
        # expert nobody is left to attract drops its price to 0 (the limit) all the same.
        lonely = (sizes == 0) & np.isfinite(limit)
        self.stuck |= flag & (sizes == 0) & ~np.isfinite(limit)
        delta = np.where(flag & ((delta > limit) | lonely), limit, delta)
        self.price -= delta
        movers = np.unique(ro[(rank < need[eo]) & (go < delta[eo])])
        self.evaluate(movers)
        return bool(movers.size) or bool(delta.any())

    def _groups(
        self, experts: BoolArray
    ) -> tuple[IntArray, IntArray, FloatArray, IntArray, IntArray]:
        """Every choice of a flagged expert, grouped by expert: (client, slot, margin) in
        group order, and each expert's group start and size."""
        e = experts.shape[0]
        flag = np.append(experts, False)  # index -1 (empty slot) reads False
        rows, slots = np.nonzero(flag[self.chosen])
        ex = self.chosen[rows, slots]
        # A stable sort of small integers is a radix sort in numpy: O(n).
        order = np.argsort(ex.astype(np.int16 if e < 2**15 else np.int32), kind="stable")
        rows, slots, ex = rows[order], slots[order], ex[order]
        sizes = np.bincount(ex, minlength=e)
        starts = np.cumsum(sizes) - sizes
        return rows, slots, self.margin[rows, slots], starts, sizes

    def _trim(self, upper: IntArray) -> None:
        over = self.counts > upper
        if not over.any():
            return
        rows, slots, mg, starts, sizes = self._groups(over)
        drop = np.zeros(rows.size, dtype=bool)
        for j in np.flatnonzero(over):
            a, n = int(starts[j]), int(sizes[j])
            k = n - int(upper[j])
            seg = mg[a : a + n]
            drop[a + np.argpartition(seg, k - 1)[:k]] = True
        r, s = rows[drop], slots[drop]
        self.counts -= np.bincount(self.chosen[r, s], minlength=self.counts.shape[0])
        self.chosen[r, s] = -1
        self.margin[r, s] = 0.0


def run_auction(
    cand_e: IntArray,
    cand_s: FloatArray,
    cap: IntArray,
    upper: IntArray,
    lower: IntArray,
    eps: float,
    max_iters: int,
    tail: int,
    price: FloatArray | None = None,
) -> Auction:
    c = cand_e.shape[0]
    kmax = int(cap.max(initial=0))
    auction = Auction(
        cand_e=cand_e,
        cand_s=cand_s,
        cap=cap,
        kmax=kmax,
        price=np.zeros(upper.shape[0]) if price is None else price.copy(),
        chosen=np.full((c, kmax), -1, dtype=np.int64),
        chosen_s=np.zeros((c, kmax)),
        margin=np.zeros((c, kmax)),
        counts=np.zeros(upper.shape[0], dtype=np.int64),
    )
    auction.run(upper, lower, eps, max_iters, tail)
    return auction


def default_eps(p: Problem) -> float:
    return 3e-3 * max(float(p.scores.max() - p.scores.min()), 1e-12)


def discover_prices(p: Problem, eps: float, max_iters: int, sample: int) -> FloatArray:
    """Approximate optimal expert prices λ* from an auction on a subset of the clients.

    The subset is evenly spaced (stratified when clients come sorted by type), every expert is
    a candidate, and U_e and L_e are scaled to the subset's share.
    """
    c, e = p.shape
    if c == 0 or sample <= 0:
        return np.zeros(e)
    sub = np.unique(np.linspace(0, c - 1, min(c, sample)).astype(np.int64))
    share = sub.size / c
    sub_upper = np.ceil(p.upper * share - 1e-9).astype(np.int64)
    sub_lower = np.floor(p.lower * share + 1e-9).astype(np.int64)
    every = np.broadcast_to(np.arange(e, dtype=np.int64), (sub.size, e)).copy()
    # Its tail of single displacements barely moves prices: cut it at 0.2% of the slots.
    tail = int(2e-3 * float(p.cap[sub].sum()))
    return run_auction(
        every, p.scores[sub], p.cap[sub], sub_upper, sub_lower, eps, max_iters, tail
    ).price


def dual_bound(
    scores: ArrayLike,
    cap: ArrayLike,
    lower: ArrayLike,
    upper: ArrayLike,
    price: ArrayLike | None = None,
) -> float:
    """An upper bound on the optimum, certified by LP duality (any prices give one).

    D(λ) = Σ_c (sum of c's best cap_c positive values of F(c,·) − λ) + Σ_e (U_e·λ_e⁺ −
    L_e·λ_e⁻) is the Lagrangian dual of the per-expert bounds, so D(λ) ≥ the LP optimum ≥
    every assignment's objective. `objective(x) / dual_bound(...)` thus certifies how close
    x is to optimal where the exact solver is too slow to run.

    Args:
        scores: (C, E) finite scores.
        cap: (C,) client capacities.
        lower: (E,) per-expert minimum clients.
        upper: (E,) per-expert maximum clients.
        price: λ (E,); default: the prices `solve_fast` discovers on a sample of clients.
    """
    p = prepare(scores, cap, lower, upper)
    c, e = p.shape
    lam = (
        discover_prices(p, default_eps(p), 1000, 4000)
        if price is None
        else np.asarray(price, dtype=np.float64)
    )
    if lam.shape != (e,):
        raise ValueError(f"price must have shape ({e},), got {lam.shape}")
    kmax = int(p.cap.max(initial=0))
    total = float((p.upper * np.maximum(lam, 0.0)).sum() - (p.lower * np.maximum(-lam, 0.0)).sum())
    if c == 0 or kmax == 0:
        return total
    value = p.scores - lam[None, :]
    top = -np.partition(-value, kmax - 1, axis=1)[:, :kmax] if kmax < e else value
    top = -np.sort(-top, axis=1)
    take = (np.arange(top.shape[1])[None, :] < p.cap[:, None]) & (top > 0.0)
    return total + float(top[take].sum())
