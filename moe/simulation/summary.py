"""Pure reductions from simulated runs to the experiment's summary figures."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from moe.simulation.records import RunResult


def rounds_to(result: RunResult, threshold: float, max_rounds: int) -> int:
    """First round whose accuracy reaches `threshold`; `max_rounds + 1` when none does."""
    for rec in result.records:
        if rec.accuracy >= threshold:
            return rec.round
    return max_rounds + 1


def sim_time_to(result: RunResult, threshold: float) -> float | None:
    """Simulated seconds until the accuracy first reaches `threshold` (None if never)."""
    elapsed = 0.0
    for rec in result.records:
        elapsed += rec.round_time_s
        if rec.accuracy >= threshold:
            return elapsed
    return None


def _mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values)) if values else 0.0


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _median_or_none(values: Sequence[float | None]) -> float | None:
    """Median where None (never reached) ranks above every value; None if the median is."""
    ranked = sorted((v is None, v or 0.0) for v in values)
    if not ranked:
        return None
    mid = len(ranked) // 2
    picks = ranked[mid - 1 : mid + 1] if len(ranked) % 2 == 0 else ranked[mid : mid + 1]
    if any(never for never, _ in picks):
        return None
    return _median([v for _, v in picks])


def summarize_strategy(
    runs: Sequence[RunResult],
    target: float,
    max_rounds: int,
    reference: float,
    *,
    second_fraction: float = 0.9,
) -> dict[str, Any]:
    """Figures of one strategy in one regime over its seeds (runs sorted by seed).

    Args:
        runs: the strategy's runs in the regime, one per seed.
        target: the target accuracy.
        max_rounds: R; a run that never reaches a threshold counts R + 1 rounds.
        reference: the centralized accuracy; the second threshold is `second_fraction` of it.
        second_fraction: the second threshold's fraction (``rounds_to_0.9x_median``).
    """
    runs = sorted(runs, key=lambda r: r.seed)
    to_target = [rounds_to(r, target, max_rounds) for r in runs]
    to_09 = [rounds_to(r, second_fraction * reference, max_rounds) for r in runs]
    times = [sim_time_to(r, target) for r in runs]
    reached = [t for t in times if t is not None]
    per_round = [rec for r in runs for rec in r.records]
    bytes_round = [rec.bytes_down + rec.bytes_up for rec in per_round]
    devices_round = [rec.devices_assigned for rec in per_round]
    whole = _mean([r.whole_model_bytes for r in runs])
    per_device = sum(bytes_round) / max(1, sum(devices_round))
    return {
        "seeds": [r.seed for r in runs],
        "rounds_to_target": to_target,
        "rounds_to_target_median": _median(to_target),
        "rounds_to_0.9x": to_09,
        "rounds_to_0.9x_median": _median(to_09),
        "final_accuracy_median": _median([r.records[-1].accuracy for r in runs if r.records]),
        "final_accuracy_per_seed": [r.records[-1].accuracy for r in runs if r.records],
        "load_cv_mean": _mean([rec.load_cv for rec in per_round]),
        "late_updates_mean": _mean([rec.late_updates for rec in per_round]),
        "bytes_per_round_mean": _mean(bytes_round),
        # Down + up bytes per participating device over twice the whole model (down + up).
        "bytes_per_device_vs_whole_model": per_device / (2 * whole) if whole else None,
        # Never reaching the target ranks last; None when the median run never reached it.
        "sim_time_to_target_median": _median_or_none(times),
        "seeds_reaching_target": len(reached),
        "applied_updates_mean": _mean([rec.updates_applied for rec in per_round]),
        "devices_assigned_mean": _mean([rec.devices_assigned for rec in per_round]),
    }


def reduction(strategies: dict[str, dict[str, Any]], ours: str, base: str) -> float | None:
    """1 − ours' median rounds-to-target / base's median (None when either is missing)."""
    if ours not in strategies or base not in strategies:
        return None
    denom = strategies[base]["rounds_to_target_median"]
    return 1.0 - strategies[ours]["rounds_to_target_median"] / denom if denom else None


def wins(strategies: dict[str, dict[str, Any]], ours: str, base: str) -> dict[str, int] | None:
    """Paired seed comparison of rounds-to-target: faster / tied / slower counts."""
    if ours not in strategies or base not in strategies:
        return None
    pairs = zip(
        strategies[ours]["rounds_to_target"], strategies[base]["rounds_to_target"], strict=True
    )
    out = {"faster": 0, "tied": 0, "slower": 0}
    for a, b in pairs:
        out["faster" if a < b else "tied" if a == b else "slower"] += 1
    return out
