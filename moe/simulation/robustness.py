"""The robustness experiment: paired runs of every aggregation rule, clean and under attack.

One `RobustJob` per (attack or clean, rule, seed) runs `run_simulation` with a fraction of the
fleet malicious (`moe.simulation.attacks`: the same devices, the same noise, for every rule of
a seed) and reports the run. `summarize_robustness` reduces the runs to what
`DIR/summary.json` holds:

    {"default_rule": name, "clean": {rule: final_accuracy_median},
     "attacks": {attack: {rule: final_accuracy_median}}, "attackers": fraction,
     "seeds": [...], ...}

A run's final accuracy is the mean test accuracy of its last `FINAL_WINDOW` rounds: one round's
accuracy swings by several points from round to round, and a 5-point band is the question.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from moe.aggregation import AggregationRule, make_rule
from moe.aggregation.clipping import ClippedFedAvg
from moe.scenario import ScenarioConfig
from moe.simulation.attacks import ATTACKS, Adversary, Attack, choose_attackers
from moe.simulation.engine import run_simulation
from moe.simulation.records import RunResult
from moe.simulation.summary import json_float
from moe.training import single_threaded_blas

CLEAN = "clean"
DEFAULT_RULE = ClippedFedAvg.name
RULES: tuple[str, ...] = ("fedavg", DEFAULT_RULE, "trimmed-mean", "median")
FINAL_WINDOW = 5
# The goal: under attack, the default rule within this many points of its clean accuracy.
TOLERANCE = 0.05
# Robust rules' parameters here: trim 20% from each end, the attacker share (the trim only
# bites where int(0.2 · n) >= 1, i.e. from 5 updates of a part in a round).
TRIM_RATIO = 0.2


def rule_by_name(name: str) -> AggregationRule:
    """The rule `name` with the experiment's parameters (`trimmed-mean` trims `TRIM_RATIO`)."""
    if name == "trimmed-mean":
        return make_rule(name, trim_ratio=TRIM_RATIO)
    return make_rule(name)


@dataclass(frozen=True, slots=True)
class RobustJob:
    """One run: a rule, a seed, clean or under one attack.

    Attributes:
        condition: `clean` or an attack's name.
        rule: the aggregation rule's name (`rule_by_name`).
        config: the scenario.
        strategy: the matching strategy.
        rounds: R.
        attackers: the malicious fraction of the fleet (ignored when clean).
    """

    condition: str
    rule: str
    config: ScenarioConfig
    strategy: str
    rounds: int
    attackers: float

    def run(self) -> tuple[str, str, RunResult]:
        """(condition, rule, the run), single-threaded BLAS (jobs run side by side)."""
        adversary = None
        if self.condition != CLEAN:
            attack: Attack = _attack(self.condition)
            devices = choose_attackers(self.config.num_devices, self.attackers, self.config.seed)
            adversary = Adversary(attack, devices, self.config.seed)
        # A run that an attack makes diverge overflows in training: that is an outcome to
        # measure (its updates are then refused as non-finite), not a warning to print.
        with single_threaded_blas(), np.errstate(over="ignore", invalid="ignore"):
            result = run_simulation(
                self.config,
                self.strategy,
                self.rounds,
                rule=rule_by_name(self.rule),
                adversary=adversary,
            )
        return self.condition, self.rule, replace(result, strategy=self.rule)


def run_robust_job(job: RobustJob) -> tuple[str, str, RunResult]:
    """Run one job (a module-level function, for process pools)."""
    return job.run()


def _attack(name: str) -> Attack:
    for attack in ATTACKS:
        if attack == name:
            return attack
    raise ValueError(f"unknown attack {name!r}; choose from {ATTACKS}")


@dataclass(frozen=True, slots=True)
class RobustnessPlan:
    """What the robustness experiment runs.

    Attributes:
        base: every scenario setting but the seed.
        seeds: paired seeds (each rule and attack of a seed meets the same fleet, data,
            attackers and noise).
        rounds: R per run.
        attackers: malicious fraction of the fleet.
        rules: aggregation rules compared.
        attacks: attacks run (besides the clean runs).
        strategy: the matching strategy.
    """

    base: ScenarioConfig
    seeds: tuple[int, ...]
    rounds: int
    attackers: float = 0.2
    rules: tuple[str, ...] = RULES
    attacks: tuple[str, ...] = ATTACKS
    strategy: str = "fitness"

    def __post_init__(self) -> None:
        if not (self.seeds and self.rules) or self.rounds < FINAL_WINDOW:
            raise ValueError(f"need seeds, rules and rounds >= {FINAL_WINDOW}")
        for name in self.rules:
            rule_by_name(name)  # raises for an unknown rule
        for name in self.attacks:
            _attack(name)
        if not 0 <= self.attackers < 1:
            raise ValueError(f"attackers must be in [0, 1), got {self.attackers}")

    @property
    def conditions(self) -> tuple[str, ...]:
        """`clean`, then every attack."""
        return (CLEAN, *self.attacks)

    def jobs(self) -> list[RobustJob]:
        """One run per (condition, rule, seed)."""
        return [
            RobustJob(
                c, rule, replace(self.base, seed=s), self.strategy, self.rounds, self.attackers
            )
            for c in self.conditions
            for rule in self.rules
            for s in self.seeds
        ]


def final_accuracy(result: RunResult, window: int = FINAL_WINDOW) -> float:
    """Mean test accuracy of the run's last `window` rounds."""
    tail = [rec.accuracy for rec in result.records[-window:]]
    if not tail:
        raise ValueError("a run without rounds has no final accuracy")
    return statistics.fmean(tail)


def summarize_robustness(
    plan: RobustnessPlan, results: Sequence[tuple[str, str, RunResult]]
) -> dict[str, Any]:
    """The summary of every run (see the module docs), plus per-seed finals and the goal check.

    Raises:
        ValueError: when a (condition, rule, seed) of the plan has no run.
    """
    finals: dict[str, dict[str, dict[int, float]]] = {
        c: {rule: {} for rule in plan.rules} for c in plan.conditions
    }
    rejected: dict[str, dict[str, int]] = {c: dict.fromkeys(plan.rules, 0) for c in finals}
    for condition, rule, result in results:
        finals[condition][rule][result.seed] = final_accuracy(result)
        rejected[condition][rule] += sum(rec.updates_rejected for rec in result.records)
    for condition, per_rule in finals.items():
        for rule, per_seed in per_rule.items():
            missing = sorted(set(plan.seeds) - set(per_seed))
            if missing:
                raise ValueError(f"{condition}/{rule}: no run for seeds {missing}")

    def medians(condition: str) -> dict[str, float | None]:
        return {
            rule: json_float(statistics.median(finals[condition][rule].values()))
            for rule in plan.rules
        }

    clean = medians(CLEAN)
    attacks = {a: medians(a) for a in plan.attacks}
    default = DEFAULT_RULE if DEFAULT_RULE in plan.rules else plan.rules[0]
    drops = {
        a: {rule: json_float(_drop(clean[rule], attacks[a][rule])) for rule in plan.rules}
        for a in plan.attacks
    }
    worst = max(
        (d for d in (drops[a][default] for a in plan.attacks) if d is not None), default=0.0
    )
    return {
        "default_rule": default,
        "clean": clean,
        "attacks": attacks,
        "attackers": plan.attackers,
        "seeds": list(plan.seeds),
        "drop_from_clean": drops,
        "goal": {
            "tolerance": TOLERANCE,
            "default_worst_drop": json_float(worst),
            "default_within_tolerance": worst <= TOLERANCE,
        },
        "final_accuracy_per_seed": {
            c: {rule: {str(s): v for s, v in sorted(per.items())} for rule, per in per_rule.items()}
            for c, per_rule in finals.items()
        },
        "updates_rejected": rejected,
        "rounds": plan.rounds,
        "final_window": FINAL_WINDOW,
        "strategy": plan.strategy,
        "regime": plan.base.regime,
        "devices": plan.base.num_devices,
        "model": plan.base.model,
        "experts": plan.base.num_experts,
    }


def _drop(clean: float | None, attacked: float | None) -> float | None:
    if clean is None or attacked is None:
        return None
    return clean - attacked


def robustness_table(summary: Mapping[str, Any]) -> str:
    """The summary's medians as a Markdown table: one row per condition, one column per rule
    (the accuracy, and under attack its drop from the same rule's clean accuracy)."""
    rules = list(summary["clean"])
    head = "| condition | " + " | ".join(f"`{r}`" for r in rules) + " |"
    lines = [head, "|---" * (len(rules) + 1) + "|"]
    lines.append("| clean | " + " | ".join(_fmt(summary["clean"][r]) for r in rules) + " |")
    for attack, per_rule in summary["attacks"].items():
        cells = [
            f"{_fmt(per_rule[r])} ({_signed(summary['drop_from_clean'][attack][r])})" for r in rules
        ]
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _signed(drop: float | None) -> str:
    return "n/a" if drop is None else f"{-drop:+.3f}"
