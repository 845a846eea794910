"""Oort's guided participant selection, adapted to expert slots.

Oort (F. Lai, X. Zhu, H. V. Madhyastha, M. Chowdhury, "Oort: Efficient Federated Learning via
Guided Participant Selection", OSDI 2021) picks the clients of a round by a utility that
multiplies statistical utility (how much a client's data would still teach the model) by a
system penalty (how much it would delay the round), explores clients it has not measured, and
paces the preferred round duration T. Our reading follows the paper and FedScale's
implementation (SymbioticLab/FedScale, thirdparty/oort/oort.py); the differences are listed
in `OortStrategy`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from moe.matching.base import BoolArray, FloatArray, IntArray, MatchingInput, MatchingStrategy
from moe.matching.fitness import effective_capacity


def _prefix(cap: IntArray, budget: float) -> int:
    """How many of `cap` (in order) to take until their sum reaches `budget`."""
    if budget <= 0 or cap.size == 0:
        return 0
    before = np.cumsum(cap) - cap  # slots the earlier clients already cover
    return int(np.count_nonzero(before < budget))


class OortStrategy(MatchingStrategy):
    """Oort's participant selection; the chosen clients fill their effective capacity.

    Per client i (rows of the problem):

    - statistical utility U_i = |B_i|·loss_i (`num_samples` × `data_loss`, the RMS per-sample
      loss; 1 per sample where `num_samples` is None). As FedScale does, U is clipped at its
      `clip_quantile` over the explored clients and min-max scaled to [0, 1], so the staleness
      bonus below is on a comparable scale; then + sqrt(0.1·ln t / L_i), t the round and L_i
      the last round i was assigned (`last_round`, at least 1; no bonus where unknown).
    - system penalty ×(T/t_i)^α where t_i > T, α = `round_penalty`, t_i =
      `problem.estimated_time(effective capacity)`, T the pacer's preferred duration.
    - unexplored: `last_round` = -1 or `data_loss` NaN (with `data_loss` None, U_i = |B_i|,
      Oort's initial reward, and only `last_round` marks unexplored clients).

    How many clients: Oort picks K participants; here clients are taken until their effective
    capacities cover ceil(`slots_per_expert`·E) expert slots (or every client with a slot is
    taken), so each expert can get a client per round, as many as the fewest slots that can
    train all of them. The alternative, ranking every online client, would make the selection
    matter only for the order of expert choice.

    Exploration: ε = max(`exploration`·`exploration_decay`^t, `exploration_min`) (Oort's
    defaults 0.9, 0.98, 0.2; computed from the round, not by counting calls, so it survives
    a matcher restart). Unexplored clients fill the first ε of the slots, drawn without
    replacement with probability ∝ speed 1/t_i (uniform where times are unknown): Oort
    prefers faster unexplored clients. Explored clients fill the rest, best utility first
    (ties at random) -- Oort samples ∝ utility among those within 95% of the K-th best; the top
    keeps the comparison deterministic in what it prefers. Either group short of clients
    leaves its slots to the other.

    Pacer: T starts at `problem.deadline_s` (or the `preferred_quantile` of the t_i when given,
    as Oort's round_threshold; else the median t_i when the deadline is unknown). At every
    round r that is a multiple of `pacer_step` (from 2·`pacer_step` on), if the mean per-round
    summed utility of the explored clients selected in rounds [r − 2s, r − s) exceeds that of
    [r − s, r), T grows by `pacer_delta`·T_0 (the paper's rule; FedScale also relaxes on a flat
    utility and tightens on a sharp change). With T at the deadline the penalty rarely bites:
    the effective capacity already fits every client into the deadline.

    State: the pacer's history lives in the instance (the matcher service builds one strategy
    per run, so after a matcher restart the pacer starts over at T_0; it also starts over when
    the rounds go back, as when an instance is reused for a new run). Keyed by round, so a
    round solved twice gives the same answer. Rows are not client ids, so the utility history
    is recorded at selection, not from the selected clients' later feedback as in Oort.

    Experts: each chosen client, in selection order, takes the experts the fewest chosen
    clients have taken so far, ties by its affinity, then at random. Selection stops at about
    E slots precisely so that every expert can be trained; top-by-affinity would pile the few
    selected clients onto the popular experts and leave the rest untrained.
    """

    name: ClassVar[str] = "oort"

    def __init__(
        self,
        *,
        exploration: float = 0.9,
        exploration_decay: float = 0.98,
        exploration_min: float = 0.2,
        round_penalty: float = 2.0,
        pacer_step: int = 20,
        pacer_delta: float = 0.1,
        slots_per_expert: float = 1.0,
        preferred_quantile: float | None = None,
        clip_quantile: float = 0.95,
    ) -> None:
        """Configure the selector (defaults: Oort's, see the class docstring)."""
        if not 0.0 <= exploration_min <= exploration <= 1.0:
            raise ValueError("need 0 <= exploration_min <= exploration <= 1")
        if not 0.0 < exploration_decay <= 1.0:
            raise ValueError("exploration_decay must be in (0, 1]")
        if pacer_step < 1 or pacer_delta < 0 or round_penalty < 0:
            raise ValueError("need pacer_step >= 1, pacer_delta >= 0, round_penalty >= 0")
        if not slots_per_expert > 0:
            raise ValueError("slots_per_expert must be > 0")
        if preferred_quantile is not None and not 0.0 <= preferred_quantile <= 1.0:
            raise ValueError("preferred_quantile must be in [0, 1]")
        if not 0.0 < clip_quantile <= 1.0:
            raise ValueError("clip_quantile must be in (0, 1]")
        self.exploration = exploration
        self.exploration_decay = exploration_decay
        self.exploration_min = exploration_min
        self.round_penalty = round_penalty
        self.pacer_step = pacer_step
        self.pacer_delta = pacer_delta
        self.slots_per_expert = slots_per_expert
        self.preferred_quantile = preferred_quantile
        self.clip_quantile = clip_quantile
        self._history: dict[int, float] = {}  # round -> summed utility of exploited picks
        self._raised: dict[int, bool] = {}  # pacer decisions, by round
        self._latest = -1  # the latest round seen

    def epsilon(self, round: int) -> float:
        """The fraction of slots reserved for unexplored clients in `round`."""
        decayed = self.exploration * self.exploration_decay ** max(round, 0)
        return max(decayed, self.exploration_min)

    def raises(self, round: int) -> int:
        """Pacer raises decided up to and including `round` (recording the decision)."""
        s = self.pacer_step
        if round >= 2 * s and round % s == 0 and round not in self._raised:
            old = [v for r, v in self._history.items() if round - 2 * s <= r < round - s]
            new = [v for r, v in self._history.items() if round - s <= r < round]
            self._raised[round] = bool(old and new and np.mean(old) > np.mean(new))
        return sum(1 for r, up in self._raised.items() if up and r <= round)

    def preferred_duration(self, problem: MatchingInput, times: FloatArray) -> float:
        """T for this round: T_0 raised by the pacer."""
        if self.preferred_quantile is not None and times.size:
            t0 = float(np.quantile(times, self.preferred_quantile))
        elif problem.deadline_s is not None:
            t0 = float(problem.deadline_s)
        else:
            t0 = float(np.median(times)) if times.size else math.inf
        return t0 * (1.0 + self.pacer_delta * self.raises(problem.round))

    def utility(self, problem: MatchingInput) -> tuple[FloatArray, BoolArray]:
        """(raw statistical utility |B_i|·loss_i, unexplored mask); utility is 0 where
        unexplored."""
        c = problem.num_clients
        n = np.ones(c) if problem.num_samples is None else np.asarray(problem.num_samples, float)
        if problem.data_loss is None:
            loss, unexplored = np.ones(c), np.zeros(c, dtype=bool)
        else:
            loss = np.asarray(problem.data_loss, dtype=np.float64)
            unexplored = np.isnan(loss)
        if problem.last_round is not None:
            unexplored |= np.asarray(problem.last_round) < 0
        raw: FloatArray = np.where(unexplored, 0.0, n * np.nan_to_num(loss))
        return raw, unexplored

    def scores(
        self,
        problem: MatchingInput,
        raw: FloatArray,
        explored: BoolArray,
        times: FloatArray,
        t: float,
    ) -> FloatArray:
        """Oort's exploitation score (scaled utility + staleness) × system penalty."""
        u = np.zeros_like(raw)
        if explored.any():
            hi = float(np.quantile(raw[explored], self.clip_quantile))
            lo = float(raw[explored].min())
            u = (np.minimum(raw, hi) - lo) / max(hi - lo, 1e-12)
        stale = np.zeros_like(raw)
        if problem.last_round is not None:
            last = np.maximum(np.asarray(problem.last_round, dtype=np.float64), 1.0)
            stale = np.sqrt(0.1 * math.log(max(problem.round, 1)) / last)
        slow = times > t
        penalty = np.ones_like(raw)
        penalty[slow] = (t / times[slow]) ** self.round_penalty
        out: FloatArray = (u + stale) * penalty
        return out

    def assign(self, problem: MatchingInput, rng: np.random.Generator) -> BoolArray:
        """Select clients by Oort's utility until E slots are covered; fill their capacity."""
        if problem.round < self._latest:  # rounds went back: a new run, the pacer starts over
            self._history.clear()
            self._raised.clear()
        self._latest = problem.round
        c, e = problem.num_clients, problem.num_experts
        x = np.zeros((c, e), dtype=bool)
        cap = effective_capacity(problem)
        times = problem.estimated_time(cap)
        eligible = cap > 0
        t = self.preferred_duration(problem, times[eligible])
        raw, unexplored = self.utility(problem)
        explored = eligible & ~unexplored
        fresh = eligible & unexplored
        score = self.scores(problem, raw, explored, times, t)

        # Unexplored: a speed-weighted draw without replacement (exponential keys / weight).
        speed = np.where(times > 0, 1.0 / np.maximum(times, 1e-12), 1.0)
        keys = rng.exponential(size=c) / speed
        fresh_order = np.flatnonzero(fresh)[np.argsort(keys[fresh], kind="stable")]
        tiebreak = rng.random(c)
        best = np.lexsort((tiebreak, -score))
        best = best[explored[best]]

        target = min(math.ceil(self.slots_per_expert * e - 1e-9), int(cap.sum()))
        n_fresh = _prefix(cap[fresh_order], math.floor(self.epsilon(problem.round) * target))
        order = np.concatenate([fresh_order[:n_fresh], best, fresh_order[n_fresh:]])
        chosen = order[: _prefix(cap[order], target)]

        self._history[problem.round] = float(raw[chosen].sum())  # unexplored add 0
        for r in [r for r in self._history if r < problem.round - 2 * self.pacer_step]:
            del self._history[r]

        aff = np.asarray(problem.affinity, dtype=np.float64)
        taken = np.zeros(e, dtype=np.int64)
        ties = rng.random((chosen.size, e))
        for j, i in enumerate(chosen):
            pick = np.lexsort((ties[j], -aff[i], taken))[: cap[i]]
            x[i, pick] = True
            taken[pick] += 1
        return x
