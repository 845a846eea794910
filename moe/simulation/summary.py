"""Pure reductions from simulated runs to the experiment's summary figures.

Censoring: a run that never reaches a threshold within its R rounds is *censored*. The
per-run figures (`rounds_to_target`, `time_to_target`, `bytes_to_target`) are None for it, and
the medians rank it after every number (as +inf): `median_censored` returns `math.inf` when
the median itself falls on censored runs. JSON cannot hold inf, so `summarize_strategy`
writes such a median as null (`json_float`); the count of censored runs stands beside it.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from typing import Any

from moe.simulation.records import RoundRecord, RunResult

# Rounds over which the accuracy is averaged before it is compared with a threshold.
TARGET_WINDOW = 3


def rounds_to_target(
    accuracies: Sequence[float], target: float, window: int = TARGET_WINDOW
) -> int | None:
    """First round whose trailing moving average of accuracy reaches `target`.

    `accuracies[i]` is the accuracy after round ``i + 1`` (`RoundRecord.round`). Round r's
    average is over rounds ``r - window + 1 .. r``, so the first candidate is round `window`
    (before it there is no full window: a lucky first round cannot count). One lucky round
    does not count unless the rounds around it keep the average up.

    Returns:
        The 1-based round number, or None when no round's average reaches `target`
        (censored).

    Raises:
        ValueError: `window` < 1.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    total = 0.0
    for i, acc in enumerate(accuracies):
        total += acc
        if i >= window:
            total -= accuracies[i - window]
        if i + 1 >= window and total / window >= target:
            return i + 1
    return None


def median_censored(values: Sequence[float | None]) -> float:
    """Median with None (censored) ranked after every number, as +inf.

    Returns `math.inf` when the median falls on a censored value (for an even count: when
    either middle value is censored).

    Raises:
        ValueError: no values.
    """
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(math.inf if v is None else float(v) for v in values))


def count_censored(values: Sequence[float | None]) -> int:
    """How many values are censored (None)."""
    return sum(v is None for v in values)


def paired_outcomes(ours: Sequence[float | None], theirs: Sequence[float | None]) -> dict[str, int]:
    """Paired per-seed comparison, lower is better: ``{"faster", "tied", "slower"}`` counts
    from `ours`' point of view. None (censored) ranks after every number; two Nones tie.

    Raises:
        ValueError: the sequences differ in length.
    """
    out = {"faster": 0, "tied": 0, "slower": 0}
    for a, b in zip(ours, theirs, strict=True):
        x = math.inf if a is None else a
        y = math.inf if b is None else b
        out["faster" if x < y else "tied" if x == y else "slower"] += 1
    return out


def _ratio(ours: float, theirs: float) -> float:
    """ours / theirs with inf/inf = 1, x/inf = 0, inf/x = inf, 0/0 = 1, x/0 = inf."""
    if ours == theirs:
        return 1.0
    if math.isinf(theirs) or ours == 0.0:
        return 0.0
    if math.isinf(ours) or theirs == 0.0:
        return math.inf
    return ours / theirs


def reduction_of(ours: float, theirs: float) -> float:
    """1 − ours/theirs for two medians, with the ratio rules of `_ratio` (may be −inf)."""
    return 1.0 - _ratio(ours, theirs)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of sorted values; between an infinite value and another,
    the nearer of the two (no interpolation with infinities)."""
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    a, b = sorted_values[lo], sorted_values[hi]
    if lo == hi or a == b:
        return a
    if math.isinf(a) or math.isinf(b):
        return a if pos - lo < 0.5 else b
    return a + (b - a) * (pos - lo)


def bootstrap_reduction_ci(
    ours: Sequence[float | None],
    theirs: Sequence[float | None],
    *,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    horizon: float | None = None,
) -> tuple[float, float]:
    """Percentile CI of the reduction ``1 − median(ours) / median(theirs)``.

    Paired bootstrap over seeds: each resample draws seed indices with replacement and takes
    both strategies' values at those indices. Censored values (None) are +inf, or `horizon`
    (e.g. R + 1) when one is given, which keeps every median finite. With +inf, a resample's
    ratio is 1 for inf/inf (reduction 0), 0 for x/inf (reduction 1) and inf for inf/x
    (reduction −inf, so the low end may be −inf). Deterministic for a given `seed`.

    Raises:
        ValueError: the sequences differ in length or are empty, `resamples` < 1, or `level`
            is outside (0, 1).
    """
    if len(ours) != len(theirs) or not ours:
        raise ValueError("paired values: equal, non-zero lengths needed")
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError("resamples must be >= 1 and level in (0, 1)")

    def fill(values: Sequence[float | None]) -> list[float | None]:
        return [horizon if v is None and horizon is not None else v for v in values]

    a, b = fill(ours), fill(theirs)
    rng = random.Random(seed)
    n = len(a)
    reductions = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        reductions.append(
            reduction_of(median_censored([a[i] for i in idx]), median_censored([b[i] for i in idx]))
        )
    reductions.sort()
    tail = (1.0 - level) / 2.0
    return _quantile(reductions, tail), _quantile(reductions, 1.0 - tail)


def _cumulative_to(
    result: RunResult, target: float, window: int
) -> tuple[int | None, float | None, int | None]:
    """(rounds, simulated seconds, bytes) up to and including the round reaching `target`."""
    reached = rounds_to_target([r.accuracy for r in result.records], target, window)
    if reached is None:
        return None, None, None
    upto = result.records[:reached]
    return (
        upto[-1].round,
        sum(rec.round_time_s for rec in upto),
        sum(round_bytes(rec) for rec in upto),
    )


def round_bytes(rec: RoundRecord) -> int:
    """Bytes of one round that crossed MQTT: parts down, updates up, and the control traffic
    (status, telemetry, round marker, gate rows, assignments, acks: `bytes_control`)."""
    return rec.bytes_down + rec.bytes_up + rec.bytes_control


def time_to_target(result: RunResult, target: float, window: int = TARGET_WINDOW) -> float | None:
    """Simulated seconds (sum of `round_time_s`) through the round `rounds_to_target` finds;
    None when censored."""
    return _cumulative_to(result, target, window)[1]


def bytes_to_target(result: RunResult, target: float, window: int = TARGET_WINDOW) -> int | None:
    """Bytes (`round_bytes`) through the round `rounds_to_target` finds; None when censored."""
    return _cumulative_to(result, target, window)[2]


def json_float(value: float | None) -> float | None:
    """`value` for JSON: inf, −inf and nan become None (null)."""
    return None if value is None or not math.isfinite(value) else float(value)


def _json_median(values: Sequence[float | None]) -> float | None:
    return json_float(median_censored(values)) if values else None


def _mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values)) if values else 0.0


def summarize_strategy(
    runs: Sequence[RunResult],
    target: float,
    reference: float,
    *,
    second_fraction: float = 0.9,
    window: int = TARGET_WINDOW,
) -> dict[str, Any]:
    """Figures of one strategy in one regime over its seeds (JSON-ready; runs sorted by seed).

    A threshold is reached at the first round whose `window`-round trailing mean accuracy
    reaches it (`rounds_to_target`). Per-seed lists hold None for censored runs; a median that
    falls on censored runs (+inf) is written None (null), and ``censored`` counts the runs
    that never reached the target.

    Keys: ``seeds``; ``rounds_to_target`` (per seed) and ``rounds_to_target_median``;
    ``rounds_to_0.9x`` and its ``_median`` (the threshold `second_fraction` × `reference`);
    ``censored``; ``seeds_reaching_target``; ``time_to_target_median`` (simulated seconds)
    and ``sim_time_to_target_median`` (the same figure, the older name);
    ``bytes_to_target_median`` (down + up + control bytes); ``final_accuracy_median`` and
    ``final_accuracy_per_seed``; means per round of ``load_cv``, ``late_updates``,
    ``bytes_per_round`` (down + up + control), ``applied_updates``, ``devices_assigned``;
    ``bytes_per_device_vs_whole_model`` (down + up bytes per assigned device over twice the
    whole model; None without a model size).

    Args:
        runs: the strategy's runs in the regime, one per seed.
        target: the target accuracy.
        reference: the centralized accuracy; the second threshold is `second_fraction` of it.
        second_fraction: the second threshold's fraction (``rounds_to_0.9x_median``).
        window: the moving-average window of `rounds_to_target`.
    """
    runs = sorted(runs, key=lambda r: r.seed)
    to_target = [_cumulative_to(r, target, window) for r in runs]
    rounds = [t[0] for t in to_target]
    times = [t[1] for t in to_target]
    sizes: list[float | None] = [None if t[2] is None else float(t[2]) for t in to_target]
    to_09 = [
        rounds_to_target([rec.accuracy for rec in r.records], second_fraction * reference, window)
        for r in runs
    ]
    per_round = [rec for r in runs for rec in r.records]
    bytes_round = [round_bytes(rec) for rec in per_round]
    payload = sum(rec.bytes_down + rec.bytes_up for rec in per_round)
    devices = sum(rec.devices_assigned for rec in per_round)
    whole = _mean([r.whole_model_bytes for r in runs])
    final = [r.records[-1].accuracy for r in runs if r.records]
    time_median = _json_median(times)
    return {
        "seeds": [r.seed for r in runs],
        "rounds_to_target": rounds,
        "rounds_to_target_median": _json_median(rounds),
        "rounds_to_0.9x": to_09,
        "rounds_to_0.9x_median": _json_median(to_09),
        "censored": count_censored(rounds),
        "seeds_reaching_target": len(rounds) - count_censored(rounds),
        "time_to_target_median": time_median,
        "sim_time_to_target_median": time_median,
        "bytes_to_target_median": _json_median(sizes),
        "final_accuracy_median": float(statistics.median(final)) if final else 0.0,
        "final_accuracy_per_seed": final,
        "load_cv_mean": _mean([rec.load_cv for rec in per_round]),
        "late_updates_mean": _mean([rec.late_updates for rec in per_round]),
        "bytes_per_round_mean": _mean(bytes_round),
        "bytes_per_device_vs_whole_model": (
            payload / max(1, devices) / (2 * whole) if whole else None
        ),
        "applied_updates_mean": _mean([rec.updates_applied for rec in per_round]),
        "devices_assigned_mean": _mean([rec.devices_assigned for rec in per_round]),
    }


def reduction_with_horizon(
    ours: Sequence[float | None], theirs: Sequence[float | None], horizon: float
) -> tuple[float | None, bool]:
    """(1 − median(ours) / median(theirs), censored) for per-seed rounds to target.

    A censored median (+inf) is replaced by `horizon` (R + 1), and the flag says so: the
    figure is then a bound, a lower one when `theirs`' median is censored (ours is at least
    that much better) and an upper one when `ours`' is. None when both medians are censored
    or either side has no values.
    """
    if not ours or not theirs:
        return None, False
    a, b = median_censored(ours), median_censored(theirs)
    if math.isinf(a) and math.isinf(b):
        return None, True
    censored = math.isinf(a) or math.isinf(b)
    return reduction_of(min(a, horizon), min(b, horizon)), censored
