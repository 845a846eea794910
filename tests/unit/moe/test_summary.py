from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pytest

from moe.scenario import ScenarioConfig
from moe.simulation.experiment import ExperimentPlan, best_peer, summarize
from moe.simulation.records import RoundRecord, RunResult
from moe.simulation.summary import (
    bootstrap_reduction_ci,
    bytes_to_target,
    count_censored,
    json_float,
    median_censored,
    paired_outcomes,
    reduction_of,
    reduction_with_horizon,
    round_bytes,
    rounds_to_target,
    summarize_strategy,
    time_to_target,
)


def _run(
    accuracies: Sequence[float],
    *,
    seed: int = 0,
    strategy: str = "fitness",
    regime: str = "fleet",
    time_s: float = 2.0,
    down: int = 10,
    up: int = 5,
    control: int = 0,
) -> RunResult:
    records = tuple(
        RoundRecord(
            round=i + 1,
            accuracy=a,
            load_cv=0.5,
            late_updates=1,
            updates_applied=3,
            bytes_down=down,
            bytes_up=up,
            round_time_s=time_s,
            devices_assigned=3,
            bytes_control=control,
        )
        for i, a in enumerate(accuracies)
    )
    return RunResult(regime, strategy, seed, records, whole_model_bytes=100)


# rounds_to_target


def test_rounds_to_target_uses_the_trailing_mean() -> None:
    # Means: r3 .4, r4 .5 (.4+.6+.5)/3, r5 .6; rounds 1-2 have no full window.
    acc = [0.2, 0.4, 0.6, 0.5, 0.7]
    assert rounds_to_target(acc, 0.5) == 4
    assert rounds_to_target(acc, 0.6) == 5
    assert rounds_to_target(acc, 0.5, window=1) == 3


def test_a_single_lucky_round_does_not_count() -> None:
    acc = [0.1, 0.1, 0.9, 0.1, 0.1, 0.1]
    assert rounds_to_target(acc, 0.8) is None
    assert rounds_to_target(acc, 0.8, window=1) == 3


def test_the_first_candidate_is_the_first_full_window() -> None:
    assert rounds_to_target([0.9, 0.9, 0.9], 0.9) == 3
    assert rounds_to_target([0.9, 0.9], 0.5) is None
    assert rounds_to_target([0.7, 0.9, 0.8], 0.8) == 3
    assert rounds_to_target([0.9, 0.9, 0.1], 0.8) is None


def test_rounds_to_target_censored_and_bad_window() -> None:
    assert rounds_to_target([], 0.1) is None
    assert rounds_to_target([0.1, 0.2], 0.5) is None
    with pytest.raises(ValueError, match="window"):
        rounds_to_target([0.5], 0.1, window=0)


# median_censored and count_censored


def test_median_censored() -> None:
    assert median_censored([3, 1, 2]) == 2
    assert median_censored([1, 2, 3, 4]) == 2.5
    assert median_censored([1, 2, None]) == 2  # the censored run ranks last, off the middle
    assert median_censored([1, None, None]) == math.inf
    assert median_censored([1, 2, 3, None]) == 2.5
    assert median_censored([1, 2, None, None]) == math.inf  # a middle value is censored
    assert median_censored([None, None]) == math.inf
    with pytest.raises(ValueError):
        median_censored([])


def test_count_censored() -> None:
    assert count_censored([1, None, 2, None]) == 2
    assert count_censored([]) == 0


# paired_outcomes


def test_paired_outcomes_ranks_censored_last_and_ties_two() -> None:
    ours = [1, 5, None, None, 3, 4]
    theirs = [2, 5, 7, None, None, 2]
    assert paired_outcomes(ours, theirs) == {"faster": 2, "tied": 2, "slower": 2}
    assert paired_outcomes(theirs, ours) == {"faster": 2, "tied": 2, "slower": 2}
    assert paired_outcomes([None], [None]) == {"faster": 0, "tied": 1, "slower": 0}
    assert paired_outcomes([], []) == {"faster": 0, "tied": 0, "slower": 0}
    with pytest.raises(ValueError):
        paired_outcomes([1], [1, 2])


# reduction and bootstrap


def test_reduction_of_rules() -> None:
    assert reduction_of(50, 100) == 0.5
    assert reduction_of(math.inf, math.inf) == 0.0
    assert reduction_of(50, math.inf) == 1.0
    assert reduction_of(math.inf, 50) == -math.inf


def test_reduction_with_horizon() -> None:
    assert reduction_with_horizon([50, 50, 60], [100, 100, None], 201) == (0.5, False)
    # The peer's median is censored: against the horizon, a lower bound.
    value, censored = reduction_with_horizon([50, 50, 60], [None, None, 3], 201)
    assert value == pytest.approx(1 - 50 / 201)
    assert censored
    value, censored = reduction_with_horizon([None, None, 3], [100, 100, 1], 201)
    assert value == pytest.approx(1 - 201 / 100)
    assert censored
    assert reduction_with_horizon([None], [None], 201) == (None, True)
    assert reduction_with_horizon([], [1], 201) == (None, False)


def test_bootstrap_identical_and_constant_ratio() -> None:
    assert bootstrap_reduction_ci([10, 20, 30], [10, 20, 30], resamples=200) == (0.0, 0.0)
    low, high = bootstrap_reduction_ci([5, 10, 15], [10, 20, 30], resamples=200)
    assert low == pytest.approx(0.5)
    assert high == pytest.approx(0.5)


def test_bootstrap_is_deterministic_and_brackets_the_estimate() -> None:
    ours = [40, 55, 60, 42, 80, 50, 47, 90]
    theirs = [100, 70, 130, 90, 85, 120, 60, 110]
    a = bootstrap_reduction_ci(ours, theirs, resamples=500, seed=3)
    assert a == bootstrap_reduction_ci(ours, theirs, resamples=500, seed=3)
    point = 1 - median_censored(ours) / median_censored(theirs)
    assert a[0] <= point <= a[1]
    assert a[0] < a[1]
    narrow = bootstrap_reduction_ci(ours, theirs, resamples=500, seed=3, level=0.5)
    assert a[0] <= narrow[0] <= narrow[1] <= a[1]


def test_bootstrap_censored_rules() -> None:
    # inf/inf is ratio 1: no reduction.
    assert bootstrap_reduction_ci([None, None], [None, None], resamples=50) == (0.0, 0.0)
    # x/inf is ratio 0: the whole reduction.
    assert bootstrap_reduction_ci([5, 6], [None, None], resamples=50) == (1.0, 1.0)
    # inf/x: reduction −inf.
    assert bootstrap_reduction_ci([None, None], [5, 6], resamples=50) == (-math.inf, -math.inf)
    # With a horizon, censored runs count as it.
    low, high = bootstrap_reduction_ci([5, 5], [None, None], resamples=50, horizon=10)
    assert low == pytest.approx(0.5)
    assert high == pytest.approx(0.5)


def test_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        bootstrap_reduction_ci([1], [1, 2])
    with pytest.raises(ValueError):
        bootstrap_reduction_ci([], [])
    with pytest.raises(ValueError):
        bootstrap_reduction_ci([1], [1], level=1.0)
    with pytest.raises(ValueError):
        bootstrap_reduction_ci([1], [1], resamples=0)


# time and bytes to target


def test_time_and_bytes_to_target_sum_through_the_reaching_round() -> None:
    run = _run([0.2, 0.4, 0.6, 0.5, 0.7], time_s=2.5, down=10, up=5, control=1)
    assert time_to_target(run, 0.5) == pytest.approx(4 * 2.5)
    assert bytes_to_target(run, 0.5) == 4 * 16
    assert time_to_target(run, 0.99) is None
    assert bytes_to_target(run, 0.99) is None


def test_round_bytes_without_control_field() -> None:
    rec = RoundRecord(1, 0.5, 0.0, 0, 1, bytes_down=7, bytes_up=3, round_time_s=1.0)
    assert round_bytes(rec) == 10 + getattr(rec, "bytes_control", 0)


def test_json_float() -> None:
    assert json_float(math.inf) is None
    assert json_float(-math.inf) is None
    assert json_float(math.nan) is None
    assert json_float(None) is None
    assert json_float(2) == 2.0


# summarize_strategy


def test_summarize_strategy_censoring_and_keys() -> None:
    runs = [
        _run([0.9, 0.9, 0.9], seed=1),
        _run([0.1, 0.95, 0.1], seed=0),  # one lucky round: censored
        _run([0.1, 0.1, 0.1], seed=2),
    ]
    s = summarize_strategy(runs, 0.8, 1.0)
    assert s["seeds"] == [0, 1, 2]
    assert s["rounds_to_target"] == [None, 3, None]
    assert s["rounds_to_target_median"] is None
    assert s["censored"] == 2
    assert s["seeds_reaching_target"] == 1
    assert s["time_to_target_median"] is None
    assert s["sim_time_to_target_median"] is None
    assert s["bytes_to_target_median"] is None
    assert s["rounds_to_0.9x"] == [None, 3, None]
    assert s["final_accuracy_per_seed"] == [0.1, 0.9, 0.1]
    json.dumps(s, allow_nan=False)


def test_summarize_strategy_medians() -> None:
    runs = [
        _run([0.9, 0.9, 0.9], seed=0, control=2),
        _run([0.1, 0.9, 0.9, 0.9], seed=1, control=2),  # mean 0.9 first at round 4
        _run([0.1, 0.1, 0.1], seed=2, control=2),
    ]
    s = summarize_strategy(runs, 0.75, 1.0)
    assert s["rounds_to_target"] == [3, 4, None]
    assert s["rounds_to_target_median"] == 4
    assert s["censored"] == 1
    assert s["time_to_target_median"] == pytest.approx(8.0)
    assert s["bytes_to_target_median"] == 4 * 17
    assert s["bytes_per_round_mean"] == 17
    # Payload only (down + up) per device over twice the whole model.
    assert s["bytes_per_device_vs_whole_model"] == pytest.approx(15 / 3 / 200)
    assert s["load_cv_mean"] == 0.5
    assert s["devices_assigned_mean"] == 3


# summarize (experiment)


def _plan(strategies: tuple[str, ...], rounds: int = 10) -> ExperimentPlan:
    return ExperimentPlan(
        regimes=("fleet",),
        strategies=strategies,
        seeds=(0, 1, 2),
        rounds=rounds,
        base=ScenarioConfig(),
    )


def _reaching(strategy: str, per_seed: Sequence[int | None], rounds: int = 10) -> list[RunResult]:
    """Runs whose accuracy jumps to 1 at the given round (never when None)."""
    out = []
    for seed, at in enumerate(per_seed):
        acc = [1.0 if at is not None and r >= at else 0.0 for r in range(1, rounds + 1)]
        out.append(_run(acc, seed=seed, strategy=strategy))
    return out


REF = {"fleet": {"centralized_accuracy": 1.0, "target_accuracy": 0.5}}


def test_summarize_best_peer_reduction_and_wins() -> None:
    # Window 3, target 0.5: a jump at round a >= 3 reaches the mean at round a + 1.
    runs = (
        _reaching("fitness", [2, 3, 4])  # rounds 2 (mean of r1-r2), 4, 5
        + _reaching("random", [None, None, 9])  # censored median
        + _reaching("oort", [6, 7, 8])  # rounds 7, 8, 9
        + _reaching("random-feasible", [5, 9, None])  # rounds 6, 10, None: median 10
    )
    out = summarize(_plan(("fitness", "random", "oort", "random-feasible")), REF, runs)
    fig = out["regimes"]["fleet"]
    assert fig["best_peer"] == "oort"
    assert fig["reduction_vs_best_peer"] == pytest.approx(1 - 4 / 8)
    assert fig["reduction_vs_best_peer_censored"] is False
    low, high = fig["reduction_vs_best_peer_ci"]
    assert low <= 0.5 <= high
    assert out["reduction_vs_best_peer"] == {"fleet": fig["reduction_vs_best_peer"]}
    # Random's median is censored: against R + 1 = 11, flagged.
    assert fig["reduction_vs_random"] == pytest.approx(1 - 4 / 11)
    assert fig["reduction_vs_random_censored"] is True
    assert out["reduction_vs_random"] == fig["reduction_vs_random"]
    assert fig["fitness_vs_random_seeds"] == {"faster": 3, "tied": 0, "slower": 0}
    strategies = fig["strategies"]
    assert strategies["fitness"]["wins_vs_fitness"] is None
    assert strategies["oort"]["wins_vs_fitness"] == {"faster": 0, "tied": 0, "slower": 3}
    assert strategies["random"]["rounds_to_target_median"] is None
    assert strategies["random"]["censored"] == 2
    json.dumps(out, allow_nan=False)


def test_summarize_censored_peer_and_no_peer() -> None:
    runs = _reaching("fitness", [2, 3, 4]) + _reaching("oort", [None, None, 1])
    fig = summarize(_plan(("fitness", "oort")), REF, runs)["regimes"]["fleet"]
    assert fig["best_peer"] == "oort"
    assert fig["reduction_vs_best_peer"] == pytest.approx(1 - 4 / 11)
    assert fig["reduction_vs_best_peer_censored"] is True
    assert fig["reduction_vs_random"] is None
    assert fig["fitness_vs_random_seeds"] is None

    runs = _reaching("fitness", [None, None, None]) + _reaching("random", [None, None, None])
    out = summarize(_plan(("fitness", "random")), REF, runs)
    fig = out["regimes"]["fleet"]
    assert fig["best_peer"] is None
    assert fig["reduction_vs_best_peer"] is None
    assert fig["reduction_vs_best_peer_ci"] is None
    assert fig["reduction_vs_random"] is None  # both censored: not computable
    assert fig["fitness_vs_random_seeds"] == {"faster": 0, "tied": 3, "slower": 0}
    assert out["reduction_vs_best_peer"] == {"fleet": None}
    json.dumps(out, allow_nan=False)


def test_best_peer_ties_go_to_fewer_censored_then_name() -> None:
    def fig(rounds: list[int | None]) -> dict[str, object]:
        return {"rounds_to_target": rounds, "censored": count_censored(rounds)}

    strategies = {
        "fitness": fig([1, 1, 1]),
        "oort": fig([5, 5, None]),
        "flex-moe": fig([5, 5, 5]),
        "affinity-feasible": fig([5, 5, 5]),
        "random": fig([1, 1, 1]),  # not deadline-aware
    }
    peers = {"oort", "flex-moe", "affinity-feasible", "fitness"}
    assert best_peer(strategies, peers) == "affinity-feasible"
    assert best_peer(strategies, {"oort"}) == "oort"
    assert best_peer(strategies, {"fitness", "random-feasible"}) is None
