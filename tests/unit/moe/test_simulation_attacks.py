"""Attack transforms, attacker choice, and the robustness summary."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from moe.errors import InvalidArgumentError
from moe.scenario import ScenarioConfig
from moe.simulation.attacks import (
    ATTACKS,
    NOISE_FACTOR,
    SCALE_FACTOR,
    Adversary,
    choose_attackers,
    flip_labels,
    poison_part,
)
from moe.simulation.engine import run_simulation
from moe.simulation.records import RoundRecord, RunResult
from moe.simulation.robustness import (
    CLEAN,
    RobustnessPlan,
    final_accuracy,
    robustness_table,
    summarize_robustness,
)

BASE = {"w": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32)}
HONEST = {"w": np.full((4, 3), 1.5, np.float32), "b": np.full(3, -0.5, np.float32)}


def delta(tensors: Any) -> dict[str, Any]:
    return {k: np.float64(tensors[k]) - BASE[k] for k in BASE}


def norm(d: dict[str, Any]) -> float:
    return math.sqrt(sum(float(np.sum(v**2)) for v in d.values()))


def test_sign_flip_reverses_the_step() -> None:
    out = poison_part("sign-flip", BASE, HONEST, np.random.default_rng(0))
    for k in BASE:
        np.testing.assert_allclose(delta(out)[k], -delta(HONEST)[k])
        assert out[k].dtype == np.float32


def test_scale_multiplies_the_step() -> None:
    out = poison_part("scale", BASE, HONEST, np.random.default_rng(0))
    for k in BASE:
        np.testing.assert_allclose(delta(out)[k], SCALE_FACTOR * delta(HONEST)[k], rtol=1e-6)


def test_noise_is_random_with_ten_times_the_honest_norm() -> None:
    a = poison_part("noise", BASE, HONEST, np.random.default_rng(1))
    b = poison_part("noise", BASE, HONEST, np.random.default_rng(2))
    assert norm(delta(a)) == pytest.approx(NOISE_FACTOR * norm(delta(HONEST)), rel=1e-5)
    assert not np.allclose(a["w"], b["w"])


def test_label_flip_leaves_the_update_and_flips_the_data() -> None:
    out = poison_part("label-flip", BASE, HONEST, np.random.default_rng(0))
    np.testing.assert_array_equal(out["w"], HONEST["w"])
    np.testing.assert_array_equal(flip_labels(np.array([0, 3, 9]), 10), [9, 6, 0])


def test_attackers_are_the_asked_fraction_and_fixed_by_the_seed() -> None:
    chosen = choose_attackers(30, 0.2, seed=5)
    assert len(chosen) == 6
    assert chosen == choose_attackers(30, 0.2, seed=5)
    assert chosen != choose_attackers(30, 0.2, seed=6)
    assert choose_attackers(30, 0.0, seed=5) == frozenset()
    with pytest.raises(InvalidArgumentError):
        choose_attackers(30, 1.0, seed=5)


def test_an_adversary_poisons_only_its_devices_and_is_deterministic() -> None:
    adversary = Adversary("noise", frozenset({3}), seed=7)
    assert adversary.poison(2, 1, "shared", BASE, HONEST) is None
    a = adversary.poison(3, 1, "shared", BASE, HONEST)
    b = adversary.poison(3, 1, "shared", BASE, HONEST)
    assert a is not None and b is not None  # noqa: PT018
    np.testing.assert_array_equal(a["w"], b["w"])
    with pytest.raises(InvalidArgumentError):
        Adversary("bribe", frozenset())  # type: ignore[arg-type]


CONFIG = ScenarioConfig(regime="label-skew", num_devices=10, seed=3)


def test_honest_devices_are_never_refused_by_the_guards() -> None:
    result = run_simulation(CONFIG, "fitness", 6)
    assert sum(r.updates_rejected for r in result.records) == 0
    assert sum(r.updates_applied for r in result.records) > 0


@pytest.mark.parametrize("attack", ATTACKS)
def test_an_attack_changes_the_run_and_the_scale_attack_hurts_plain_fedavg(attack: str) -> None:
    from moe.aggregation import make_rule

    devices = choose_attackers(CONFIG.num_devices, 0.3, CONFIG.seed)
    adversary = Adversary(attack, devices, CONFIG.seed)  # type: ignore[arg-type]
    clean = run_simulation(CONFIG, "fitness", 6, rule=make_rule("fedavg"))
    with np.errstate(over="ignore", invalid="ignore"):
        attacked = run_simulation(
            CONFIG, "fitness", 6, rule=make_rule("fedavg"), adversary=adversary
        )
    assert [r.accuracy for r in attacked.records] != [r.accuracy for r in clean.records]
    if attack == "scale":
        assert final_accuracy(attacked, 3) < final_accuracy(clean, 3) - 0.1


def _result(seed: int, accuracy: float) -> RunResult:
    record = RoundRecord(
        round=1, accuracy=accuracy, load_cv=0.0, late_updates=0, updates_applied=1,
        bytes_down=0, bytes_up=0, bytes_control=0, round_time_s=1.0,
    )  # fmt: skip
    return RunResult("fleet", "x", seed, (record,) * 5, 1, 0.1)


def test_the_summary_takes_medians_over_seeds_and_checks_the_goal() -> None:
    plan = RobustnessPlan(
        base=CONFIG, seeds=(1, 2, 3), rounds=5, rules=("fedavg", "clipped-fedavg"),
        attacks=("scale",),
    )  # fmt: skip
    accuracy = {
        (CLEAN, "fedavg"): [0.8, 0.9, 0.7],
        (CLEAN, "clipped-fedavg"): [0.8, 0.8, 0.9],
        ("scale", "fedavg"): [0.1, 0.2, 0.1],
        ("scale", "clipped-fedavg"): [0.78, 0.79, 0.9],
    }
    results = [
        (c, rule, _result(s, acc))
        for (c, rule), accs in accuracy.items()
        for s, acc in zip(plan.seeds, accs, strict=True)
    ]
    summary = summarize_robustness(plan, results)
    assert summary["default_rule"] == "clipped-fedavg"
    assert summary["clean"] == pytest.approx({"fedavg": 0.8, "clipped-fedavg": 0.8})
    assert summary["attacks"]["scale"] == pytest.approx({"fedavg": 0.1, "clipped-fedavg": 0.79})
    assert summary["attackers"] == 0.2
    assert summary["seeds"] == [1, 2, 3]
    assert summary["goal"]["default_within_tolerance"]
    assert "| scale | 0.100 (-0.700) | 0.790 (-0.010) |" in robustness_table(summary)
    with pytest.raises(ValueError, match="no run"):
        summarize_robustness(plan, results[1:])


def test_the_plan_runs_every_condition_rule_and_seed() -> None:
    plan = RobustnessPlan(base=CONFIG, seeds=(4, 5), rounds=5)
    jobs = plan.jobs()
    assert len(jobs) == 5 * 4 * 2
    assert {j.config.seed for j in jobs} == {4, 5}
    assert replace(jobs[0].config, seed=CONFIG.seed) == CONFIG
