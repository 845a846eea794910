"""Fitness of a (client, expert) pair, feasibility, and building the matcher's input.

The score of client c for expert e at round t:

    F(c,e) = w_u·Ũ(c,e) + w_a·Ã(c,e) + w_q·Q̃(c,e) + w_s·S(c) − w_l'·P(e) + w_x·X(c,e)

- Ũ, statistical utility (`statistical_utility`): the loss mass c's data brings to e,
  |B_c|·A(c,e)·L(c,e) with L the RMS loss of c's samples routed to e under the global model
  before its last training (Oort's |B|·sqrt(mean loss²), split over experts by the gate),
  scaled to [0, 1]. Measured before training, unlike Q: it says where the global expert is
  still wrong for c's data, not how well c overfits it. It is the ingredient that earned its
  rounds on the tuning seeds (moe/simulation/TUNING.md).

- Ã, affinity: A(c,e) is the fraction of c's samples the current global gate routes to e;
  Ã = A / max_e A(c,·) rescales each row so the client's favourite expert scores 1 whatever E
  is (with E = 256 raw fractions are ~1/256 and would vanish beside the other terms). A row of
  zeros (no histogram yet) stays zero.
- Q̃, measured quality: Q(c,e) ∈ (0, 1], the EMA of exp(−β·loss) of c's samples routed to e
  (`moe.profiles.fold_round_outcome`); pairs never measured (NaN) start from Ã, as the design
  says, so a new pair competes on the affinity its data shows.
- S, capability ∈ [0, 1]: speed, link, battery and reliability (`capability_scores`). It is the
  same for all of c's experts, so it decides *who* gets an expert that is wanted by more
  clients than its upper bound admits, and it makes a capable client's slot worth filling.
- P, load pressure of e: P = clip((n_e − n̄)/n̄, −1, p_max) − γ·D(e), where n is the EWMA of
  clients per expert (load monitor) and n̄ its mean (P's first term is 0 when n̄ = 0), and
  D(e) ∈ [0, 1] is starvation: ½·clip((s̄ − s_e)/s̄, 0, 1) for experts that received fewer
  routed samples than the mean s̄, plus ½·r_e/(r_e + r_0) for r_e rounds since e's last
  applied update. Over-used experts are pushed down, starving ones pulled up.
- w_l' = w_l·(1 + κ·CV(n)): the load weight grows with the measured imbalance, so pressure
  matters most when the load is most skewed (κ = `load_gain`; 0 disables).
- X, exploration (UCB-like, as Oort explores clients): X(c,e) = sqrt(ln(t + 2) / (1 + n_ce))
  with n_ce the rounds c trained e. Untried pairs get the largest bonus, which grows slowly
  with t and halves after three trials. Our prototype found that with 16 experts the fitness
  score without it locked in early specialisations: clients kept the first experts they
  trained, whose measured Q outran everyone else's affinity.

Feasibility: a client is offered at most `effective_capacity` = min(k_c, deadline capacity)
experts, where k_c comes from its memory budget and the deadline capacity from its profiled
compute and bandwidth (`deadline_capacity`, by the fleet's round-time formula
`moe.fleet.round_seconds`, so what the matcher predicts is what a device takes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike

from moe.fleet import DEFAULT_EXPERT_COST, max_experts_in_time, round_seconds
from moe.load import ExpertLoadState, imbalance
from moe.matching.base import FloatArray, IntArray, MatchingInput
from moe.profiles import ClientProfile


@dataclass(frozen=True, slots=True)
class FitnessWeights:
    """Weights and shape parameters of the fitness score (see the module docstring).

    The defaults are the tuned configuration (seeds 0-19, moe/simulation/TUNING.md): the
    statistical utility leads (1.0), affinity breaks its ties (0.1), load pressure 0.3 (an
    expert at twice the mean load loses 0.3), capability a tie-breaker between clients (0.1),
    an exploration bonus of 0.17–0.4 for untried pairs (0.2), and measured quality off (0: Q
    is measured after local training and rewards what a device overfits).

    Attributes:
        quality: w_q, weight of measured quality Q̃.
        affinity: w_a, weight of row-normalised affinity Ã.
        capability: w_s, weight of the client's capability S.
        load: w_l, weight of the load pressure P.
        exploration: w_x, weight of the UCB exploration bonus X.
        deficit: γ, weight of starvation D inside P (relative to the load term).
        stale_rounds: r_0, rounds without an update at which staleness reaches ½.
        pressure_cap: p_max, the most an over-used expert's load term can be (keeps one
            swamped expert from dominating every score).
        load_gain: κ, growth of the load weight with the CV of clients per expert.
        utility: w_u, weight of the statistical utility Ũ (loss mass the gate routes from c to
            e under the current model, `statistical_utility`).
    """

    quality: float = 0.0
    affinity: float = 0.1
    capability: float = 0.1
    load: float = 0.3
    exploration: float = 0.2
    deficit: float = 0.5
    stale_rounds: float = 3.0
    pressure_cap: float = 1.0
    load_gain: float = 0.5
    utility: float = 1.0

    def __post_init__(self) -> None:
        for name in (
            "quality",
            "affinity",
            "capability",
            "load",
            "exploration",
            "deficit",
            "utility",
        ):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"FitnessWeights.{name} must be finite and >= 0, got {v!r}")
        if not self.stale_rounds > 0:
            raise ValueError("FitnessWeights.stale_rounds must be > 0")
        if not self.pressure_cap > 0:
            raise ValueError("FitnessWeights.pressure_cap must be > 0")
        if not self.load_gain >= 0:
            raise ValueError("FitnessWeights.load_gain must be >= 0")


def effective_capacity(problem: MatchingInput) -> IntArray:
    """min(k_c, deadline capacity) per client, clipped to [0, E]: what the fitness strategy
    may assign (a client gets no more experts than it can finish before the deadline)."""
    cap = np.minimum(np.asarray(problem.capacity), np.asarray(problem.deadline_capacity))
    return np.clip(cap, 0, problem.num_experts).astype(np.int64)


def _at_least_zero(values: ArrayLike) -> FloatArray:
    """A float64 copy of `values` with negatives raised to 0 and NaN kept (what
    `np.clip(x, 0, None)` gives, several times faster on 10^8 pairs)."""
    out = np.array(values, dtype=np.float64)
    return np.maximum(out, 0.0, out=out)


def normalised_affinity(affinity: ArrayLike) -> FloatArray:
    """Ã: each row divided by its maximum (rows of zeros stay zero)."""
    a = _at_least_zero(affinity)
    top = a.max(axis=1, keepdims=True) if a.shape[1] else np.zeros((a.shape[0], 1))
    np.divide(a, top, out=a, where=top > 0)
    return a


def load_pressure(problem: MatchingInput, weights: FitnessWeights) -> FloatArray:
    """P(e): relative over-use minus γ × starvation (see the module docstring)."""
    n = np.asarray(problem.expert_clients, dtype=np.float64)
    mean = float(n.mean()) if n.size else 0.0
    over = np.clip((n - mean) / mean, -1.0, weights.pressure_cap) if mean > 0 else np.zeros_like(n)
    s = np.asarray(problem.expert_samples, dtype=np.float64)
    s_mean = float(s.mean()) if s.size else 0.0
    sample_deficit = np.clip((s_mean - s) / s_mean, 0.0, 1.0) if s_mean > 0 else np.zeros_like(s)
    r = np.clip(np.asarray(problem.rounds_since_update, dtype=np.float64), 0.0, None)
    stale = r / (r + weights.stale_rounds)
    return over - weights.deficit * 0.5 * (sample_deficit + stale)


def statistical_utility(problem: MatchingInput) -> FloatArray:
    """Ũ(c,e): the loss mass c's data would bring to e, as Oort values a client by
    |B_c|·sqrt(mean loss²), split over experts by the gate: |B_c|·A(c,e)·L(c,e), with L the
    RMS loss of c's samples routed to e under the global model before c's last training
    (`expert_loss`), else c's overall RMS loss (`data_loss`), else the median of the known
    ones (1 when none is known). Scaled to [0, 1] by its maximum over the round (the 95th
    percentile, clipped, so one outlier does not flatten the rest)."""
    u = np.empty((problem.num_clients, problem.num_experts))
    _scale_utility(u, _raw_utility(problem, u))
    return u


def _raw_utility(problem: MatchingInput, out: FloatArray) -> float:
    """|B_c|·A(c,e)·L(c,e) into `out` (C, E), row block by row block; its scale (the 95th
    percentile; 0 for an empty matrix)."""
    c = problem.num_clients
    if out.size == 0:
        return 0.0
    overall = (
        np.full(c, np.nan)
        if problem.data_loss is None
        else np.asarray(problem.data_loss, dtype=np.float64).copy()
    )
    known = overall[np.isfinite(overall)]
    overall[~np.isfinite(overall)] = float(np.median(known)) if known.size else 1.0
    samples = (
        np.ones(c) if problem.num_samples is None else np.asarray(problem.num_samples, np.float64)
    )
    loss = None if problem.expert_loss is None else np.asarray(problem.expert_loss, np.float64)
    affinity = np.asarray(problem.affinity)
    for rows in _row_blocks(problem):
        u = out[rows]
        np.maximum(affinity[rows], 0.0, out=u)
        np.multiply(samples[rows, None], u, out=u)
        if loss is None:
            u *= overall[rows, None]
        else:
            u *= np.where(np.isfinite(loss[rows]), loss[rows], overall[rows, None])
    return _scale_quantile(out)


def _scale_utility(u: FloatArray, top: float) -> None:
    """Raw utilities (`_raw_utility`) to [0, 1] in place: divided by their scale `top` and
    clipped at 1; all 0 when the scale is not positive."""
    if top > 0:
        u /= top
        np.minimum(u, 1.0, out=u)
    else:
        u[...] = 0.0


BLOCK_PAIRS: Final = 1 << 16
"""Pairs per row block of the scores: 512 KB of float64 per temporary, so each block's terms
stay in the CPU cache (a whole-matrix temporary at 10^6 × 256 is 2 GB and faults in fresh
pages on every pass)."""


def _row_blocks(problem: MatchingInput) -> list[slice]:
    rows = max(1, BLOCK_PAIRS // max(problem.num_experts, 1))
    return [slice(i, i + rows) for i in range(0, problem.num_clients, rows)]


QUANTILE_SAMPLE: Final = 1 << 20
"""Above this many pairs the scale's quantile is taken over an even stride of this many."""


def _scale_quantile(u: FloatArray) -> float:
    """The 95th percentile of `u`: exact up to `QUANTILE_SAMPLE` pairs (every fleet of the
    experiments), else over an evenly strided sample (at 10^6 × 256 the exact one flattens and
    partitions 2 GB; the sample moves the scale by < 0.5% on
    `benchmarks.matching` fleets of 10^5-10^6 clients)."""
    flat = u.reshape(-1)
    if flat.size > QUANTILE_SAMPLE:
        # A stride coprime with the row length visits every column (expert) evenly.
        stride = flat.size // QUANTILE_SAMPLE
        while math.gcd(stride, u.shape[-1]) != 1:
            stride += 1
        flat = flat[::stride]
    return float(np.quantile(flat, 0.95)) if flat.size else 0.0


def exploration_bonus(problem: MatchingInput, rows: slice = slice(None)) -> FloatArray:
    """X(c,e) = sqrt(ln(t + 2) / (1 + n_ce)) for the clients `rows`; n is 0 where never
    measured and 1 where it was measured."""
    if problem.trials is not None:
        n = _at_least_zero(np.asarray(problem.trials)[rows])
    else:
        n = (~np.isnan(np.asarray(problem.quality, dtype=np.float64)[rows])).astype(np.float64)
    n += 1.0
    np.divide(math.log(max(problem.round, 0) + 2.0), n, out=n)
    return np.sqrt(n, out=n)


def fitness_scores(problem: MatchingInput, weights: FitnessWeights | None = None) -> FloatArray:
    """F(c, e) for every client and expert, shape (C, E). See the module docstring.

    Computed row block by row block (`BLOCK_PAIRS`), each pair's terms in the same order as
    the formula, so the blocks change no bit of the result.

    Args:
        problem: the round's matching input.
        weights: the score's weights; the defaults when None.

    Returns:
        Finite scores; higher is better. Infeasibility is not encoded here (the strategy
        passes the effective capacity to the solver).
    """
    w = weights or FitnessWeights()
    out = np.empty((problem.num_clients, problem.num_experts))
    # Ũ's scale is a quantile over every pair: its raw values go into `out` first.
    top = _raw_utility(problem, out) if w.utility > 0 else 0.0
    s = np.clip(np.asarray(problem.capability, dtype=np.float64), 0.0, 1.0)
    cv, _ = imbalance(problem.expert_clients)
    w_load = w.load * (1.0 + w.load_gain * cv)
    capability = w.capability * s
    pressure = w_load * load_pressure(problem, w)
    explore = w.exploration * math.sqrt(math.log(max(problem.round, 0) + 2.0))
    affinity = np.asarray(problem.affinity)
    quality = np.asarray(problem.quality)
    for rows in _row_blocks(problem):
        a = normalised_affinity(affinity[rows])
        f = _at_least_zero(quality[rows])
        np.minimum(f, 1.0, out=f)
        unmeasured = np.isnan(f)
        np.copyto(f, a, where=unmeasured)  # new pairs start from Ã
        f *= w.quality
        a *= w.affinity
        f += a
        f += capability[rows, None]
        if w.utility > 0:
            u = out[rows]
            _scale_utility(u, top)
            u *= w.utility
            f += u
        f -= pressure[None, :]
        if w.exploration > 0:
            if problem.trials is None:
                # Two values only: untried (n = 0) and measured (n = 1).
                f += explore / math.sqrt(2.0)
                np.add(f, explore * (1.0 - 1.0 / math.sqrt(2.0)), out=f, where=unmeasured)
            else:
                x = exploration_bonus(problem, rows)
                x *= w.exploration
                f += x
        out[rows] = f
    return out


def deadline_capacity(
    compute_ms_per_sample: ArrayLike,
    bandwidth_kbps: ArrayLike,
    num_samples: ArrayLike,
    *,
    deadline_s: float,
    shared_bytes: float,
    expert_bytes: float,
    epochs: float = 1.0,
    max_experts: int,
    expert_cost: float = DEFAULT_EXPERT_COST,
) -> IntArray:
    """Experts each client can train and upload before the deadline.

    The time model is the fleet's, `moe.fleet.round_seconds` (one formula, one place): with
    m experts, T(m) = epochs·n·ms·(1 + expert_cost·(m − 1))/1000 + 8·2·(shared_bytes +
    m·expert_bytes)/(1000·kbps): local training, where every assigned expert runs densely so
    each one beyond the first adds `expert_cost` of the one-expert step time, plus downloading
    and uploading the shared part and m experts. The answer is the largest m ≤ max_experts
    with T(m) ≤ deadline_s (0 when even one expert does not fit): a device given exactly that
    many experts arrives in time by the same arithmetic `moe.fleet.round_time_s` charges.

    Args:
        compute_ms_per_sample: (C,) profiled training time per sample, ms.
        bandwidth_kbps: (C,) profiled link bandwidth, kbit/s.
        num_samples: (C,) local samples.
        deadline_s: time from assignment to deadline, seconds.
        shared_bytes: size of the shared part(s), the unit the round-time model charges.
        expert_bytes: size of one expert.
        epochs: local epochs per round.
        max_experts: upper clip (E, or the largest capacity).
        expert_cost: relative compute per expert beyond the first (the fleet's by default).

    Returns:
        (C,) int64 in [0, max_experts].
    """
    ms = np.asarray(compute_ms_per_sample, dtype=np.float64)
    kbps = np.asarray(bandwidth_kbps, dtype=np.float64)
    n = np.asarray(num_samples, dtype=np.float64)
    if (kbps <= 0).any() or (ms < 0).any():
        raise ValueError("bandwidth must be > 0 and compute time >= 0")
    return max_experts_in_time(
        ms,
        kbps,
        n,
        epochs,
        shared_bytes=shared_bytes,
        expert_bytes=expert_bytes,
        deadline_s=deadline_s,
        max_experts=max_experts,
        expert_cost=expert_cost,
    )


def capability_scores(
    compute_ms_per_sample: ArrayLike,
    bandwidth_kbps: ArrayLike,
    battery: ArrayLike,
    completion_rate: ArrayLike,
) -> FloatArray:
    """S(c) ∈ [0, 1]: the mean of speed, link, battery and reliability.

    Speed is m/(m + ms_c) with m the fleet median compute time (0.5 for a median device,
    → 1 for a fast one), link likewise b_c/(b_c + median b); battery and completion rate are
    in [0, 1] already. Fleet-relative, so the score needs no units or absolute thresholds.
    """
    ms = np.asarray(compute_ms_per_sample, dtype=np.float64)
    kbps = np.asarray(bandwidth_kbps, dtype=np.float64)
    if ms.size == 0:
        return np.zeros(0)
    m = float(np.median(ms))
    b = float(np.median(kbps))
    speed = m / (m + ms) if m > 0 else np.ones_like(ms)
    link = kbps / (kbps + b) if b > 0 else np.ones_like(kbps)
    bat = np.clip(np.asarray(battery, dtype=np.float64), 0.0, 1.0)
    rel = np.clip(np.asarray(completion_rate, dtype=np.float64), 0.0, 1.0)
    return np.asarray((speed + link + bat + rel) / 4.0, dtype=np.float64)


def build_matching_input(
    profiles: Sequence[ClientProfile],
    load: ExpertLoadState,
    *,
    round: int,
    deadline_s: float,
    shared_bytes: float,
    expert_bytes: float,
    epochs: float = 1.0,
    lower: ArrayLike | None = None,
    upper: ArrayLike | None = None,
    expert_cost: float = DEFAULT_EXPERT_COST,
) -> MatchingInput:
    """The matcher's input for `profiles` (rows, in that order) and the global load.

    Args:
        profiles: the clients to match this round (the caller filters online ones).
        load: the load monitor's state; E is its number of experts.
        round: the round being opened.
        deadline_s: seconds from assignment to deadline (for the deadline capacity).
        shared_bytes: serialized size of the shared part(s).
        expert_bytes: serialized size of one expert.
        epochs: local epochs per round.
        lower: hard per-expert floors (default 0: the strategy's policy decides).
        upper: hard per-expert ceilings (default C: the strategy's policy decides).
        expert_cost: the round-time model's compute per expert beyond the first.

    Returns:
        A MatchingInput whose rows follow `profiles`.
    """
    e = load.num_experts
    c = len(profiles)
    quality = np.full((c, e), np.nan)
    trials = np.zeros((c, e), dtype=np.int64)
    affinity = np.zeros((c, e))
    for i, prof in enumerate(profiles):
        affinity[i] = prof.affinity(e)
        for j, qv in prof.expert_quality.items():
            if 0 <= j < e:
                quality[i, j] = qv
        for j, nv in prof.expert_trials.items():
            if 0 <= j < e:
                trials[i, j] = nv
    expert_loss = np.full((c, e), np.nan)
    data_loss = np.full(c, np.nan)
    for i, prof in enumerate(profiles):
        if prof.data_loss is not None:
            data_loss[i] = prof.data_loss
        for j, lv in prof.expert_data_loss.items():
            if 0 <= j < e:
                expert_loss[i, j] = lv
    ms = np.array([p.compute_ms_per_sample for p in profiles], dtype=np.float64)
    kbps = np.array([p.bandwidth_kbps for p in profiles], dtype=np.float64)
    n = np.array([p.num_samples for p in profiles], dtype=np.float64)
    one = round_seconds(
        ms, kbps, n, epochs, 1, shared_bytes + expert_bytes, expert_cost=expert_cost
    )
    two = round_seconds(
        ms, kbps, n, epochs, 2, shared_bytes + 2 * expert_bytes, expert_cost=expert_cost
    )
    cap = np.array([p.capacity for p in profiles], dtype=np.int64)
    dcap = (
        deadline_capacity(
            ms,
            kbps,
            n,
            deadline_s=deadline_s,
            shared_bytes=shared_bytes,
            expert_bytes=expert_bytes,
            epochs=epochs,
            max_experts=e,
            expert_cost=expert_cost,
        )
        if c
        else np.zeros(0, dtype=np.int64)
    )
    capability = capability_scores(
        ms,
        kbps,
        np.array([p.battery for p in profiles], dtype=np.float64),
        np.array([p.completion_rate for p in profiles], dtype=np.float64),
    )
    return MatchingInput(
        round=round,
        capacity=cap,
        deadline_capacity=dcap,
        affinity=affinity,
        quality=quality,
        capability=capability,
        expert_clients=np.asarray(load.clients_ewma, dtype=np.float64),
        expert_samples=np.asarray(load.samples_routed, dtype=np.float64),
        rounds_since_update=np.asarray(load.rounds_since_update, dtype=np.int64),
        lower=np.zeros(e, dtype=np.int64) if lower is None else np.asarray(lower, np.int64),
        upper=np.full(e, c, dtype=np.int64) if upper is None else np.asarray(upper, np.int64),
        trials=trials,
        num_samples=n,
        data_loss=data_loss,
        expert_loss=expert_loss,
        last_round=np.array([p.last_round for p in profiles], dtype=np.int64),
        time_first=one,
        time_per_expert=two - one,
        deadline_s=deadline_s,
    )
