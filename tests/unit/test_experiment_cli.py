from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmoe.commands.experiment import ExperimentSettings, main
from fedmoe.errors import SettingsError
from fedmoe.settings import load_settings
from moe.matching import STRATEGY_NAMES, FitnessStrategy
from moe.simulation.ablation import ablation_variants
from moe.simulation.experiment import fitness_strategy

STRATEGY_FIELDS = {
    "rounds_to_target",
    "rounds_to_target_median",
    "rounds_to_0.9x_median",
    "final_accuracy_median",
    "load_cv_mean",
    "late_updates_mean",
    "bytes_per_round_mean",
    "sim_time_to_target_median",
    "censored",
    "time_to_target_median",
    "bytes_to_target_median",
    "wins_vs_fitness",
}


def test_tiny_experiment_writes_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    code = main(
        [
            "--out", str(out),
            "--seeds", "2",
            "--rounds", "12",
            "--devices", "20",
            "--experts", "4",
            "--workers", "1",
            "--regimes", "fleet,label-skew",
            "--strategies", "fitness,affinity-feasible,oort,random",
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["aggregation"] == "clipped-fedavg"  # the aggregator service's default
    assert set(summary["regimes"]) == {"fleet", "label-skew"}
    assert summary["reduction_vs_random"] == summary["regimes"]["fleet"]["reduction_vs_random"]
    assert set(summary["reduction_vs_best_peer"]) == set(summary["regimes"])
    for regime in summary["regimes"].values():
        assert regime["target_accuracy"] == pytest.approx(0.8 * regime["centralized_accuracy"])
        assert regime["centralized_accuracy"] > 0.5
        assert set(regime["strategies"]) == {"fitness", "affinity-feasible", "oort", "random"}
        for figures in regime["strategies"].values():
            assert set(figures) >= STRATEGY_FIELDS
            assert len(figures["rounds_to_target"]) == 2
            # Censored runs (never reached within the 12 rounds) are null.
            assert all(r is None or 1 <= r <= 12 for r in figures["rounds_to_target"])
            assert figures["censored"] == figures["rounds_to_target"].count(None)
            assert figures["bytes_per_round_mean"] > 0
        assert {"best_peer", "reduction_vs_best_peer", "reduction_vs_best_peer_ci"} <= set(regime)
        wins = regime["fitness_vs_random_seeds"]
        assert sum(wins.values()) == 2
        assert 0 < regime["bytes_per_device_vs_whole_model"] < 1
    skew = summary["regimes"]["label-skew"]["strategies"]
    # Learning happens: chance is 0.1.
    assert max(s["final_accuracy_median"] for s in skew.values()) > 0.4
    runs = json.loads((out / "runs.json").read_text())
    assert len(runs) == 2 * 4 * 2
    assert all(len(r["rounds"]) == 12 for r in runs)
    assert (out / "accuracy.png").stat().st_size > 0
    assert (out / "load.png").stat().st_size > 0


def test_settings_reject_unknown_names() -> None:
    with pytest.raises(SettingsError, match="STRATEGIES"):
        load_settings(ExperimentSettings, {"FEDMOE_EXPERIMENT_STRATEGIES": "fitness,best"})
    with pytest.raises(SettingsError, match="REGIMES"):
        load_settings(ExperimentSettings, {}, regimes="fleet,iid")
    quick = load_settings(ExperimentSettings, {"FEDMOE_EXPERIMENT_QUICK": "1"}).plan()
    assert len(quick.seeds) >= 5
    # Every peer, the deadline-blind baselines, in every regime.
    assert set(quick.strategies) == set(STRATEGY_NAMES)
    assert set(quick.regimes) == {"fleet", "fleet-large", "label-skew"}
    large = quick.config("fleet-large", 100)
    assert (large.regime, large.num_experts, large.seed) == ("fleet", 32, 100)


def test_aggregation_rule_reaches_every_run() -> None:
    plan = load_settings(ExperimentSettings, {"FEDMOE_EXPERIMENT_AGGREGATION": "fedavg"}).plan()
    assert plan.aggregation == "fedavg"
    assert {job.aggregation for job in plan.run_jobs()} == {"fedavg"}
    with pytest.raises(SettingsError, match="aggregation"):
        load_settings(ExperimentSettings, {}, aggregation="mean-ish")


def test_bad_flag_value_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path), "--workers", "0"]) == 2
    assert "WORKERS" in capsys.readouterr().err


def test_fitness_options_override_the_tuned_strategy() -> None:
    plan = load_settings(ExperimentSettings, {}, fitness="quality=0.2, equal_load=0").plan()
    assert plan.fitness_options == (("equal_load", 0.0), ("quality", 0.2))
    job = next(j for j in plan.run_jobs() if j.strategy == "fitness")
    assert job.fitness_options == plan.fitness_options
    with pytest.raises(SettingsError, match="fitness option"):
        load_settings(ExperimentSettings, {"FEDMOE_EXPERIMENT_FITNESS": "speed=3"})


def test_fitness_strategy_applies_the_options() -> None:
    s = fitness_strategy({"quality": 0.2, "equal_load": 0.0, "min_clients": 2.0})
    assert isinstance(s, FitnessStrategy)
    assert s.weights.quality == 0.2
    assert s.weights.exploration == 0.2  # the tuned value stays where not overridden
    assert not s.equal_load
    assert s.spread
    assert s.min_clients == 2


def test_ablation_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "ablation"
    code = main(
        [
            "--out", str(out),
            "--seeds", "1",
            "--rounds", "4",
            "--devices", "12",
            "--experts", "4",
            "--workers", "1",
            "--regimes", "label-skew",
            "--strategies", "fitness,affinity-feasible",
            "--ablation",
        ]
    )  # fmt: skip
    assert code == 0
    variants = ablation_variants()
    assert variants
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["variants"]) == set(variants)
    skew = summary["regimes"]["label-skew"]
    assert list(skew["strategies"]) == ["fitness", "affinity-feasible", *variants]
    assert skew["best_peer"] == "affinity-feasible"
    table = (out / "ablation.md").read_text()
    assert "## label-skew" in table
    for name in variants:
        assert f"| {name} |" in table


def test_ablation_needs_fitness() -> None:
    with pytest.raises(SettingsError, match="ABLATION"):
        load_settings(ExperimentSettings, {}, ablation=True, strategies="random")
    plan = load_settings(ExperimentSettings, {}, ablation=True, fitness="spread=0").plan()
    assert "fitness-no-spread" not in plan.variants
    assert "fitness-no-affinity" in plan.variants
    job = next(j for j in plan.run_jobs() if j.label == "fitness-no-affinity")
    assert job.strategy == "fitness"
    assert dict(job.fitness_options) == {"affinity": 0.0, "spread": 0.0}
