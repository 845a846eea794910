"""`fedmoe robustness`: every aggregation rule, clean and under each attack, paired seeds.

    fedmoe robustness --out DIR [--quick] [--seeds N] [--first-seed S] [--attackers F]
                      [--regime fleet] [--model small|large] [--rounds R]
                      [--rules fedavg,...] [--workers W]

Runs the in-process simulation (`moe.simulation.robustness`) with a fraction F of the fleet
malicious: they behave normally to the matcher, then send poisoned updates (`sign-flip`,
`scale` ×10, `noise`, `label-flip`; `moe.simulation.attacks`), against each aggregation rule
(`fedavg`, the default `clipped-fedavg`, `trimmed-mean`, `median`). Writes DIR/summary.json,
DIR/robustness.md (the table), DIR/runs.json (per-round accuracy of every run) and
DIR/accuracy.png (one panel per condition, one line per rule), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fedmoe.errors import SettingsError
from fedmoe.plots import plot_accuracy
from fedmoe.pool import unordered_map
from fedmoe.settings import add_arguments, from_args, setting
from moe.data import REGIMES, Regime
from moe.presets import MODEL_NAMES, SMALL, model_preset
from moe.scenario import ScenarioConfig
from moe.simulation.records import RunResult
from moe.simulation.robustness import (
    RULES,
    RobustnessPlan,
    robustness_table,
    run_robust_job,
    summarize_robustness,
)

# --quick: 5 seeds × 5 conditions × 4 rules = 100 runs of 120 fleet rounds (~3.5 s each on one
# core) in well under 10 minutes on 2 busy cores.
QUICK_SEEDS, FULL_SEEDS = 5, 10
QUICK_ROUNDS, FULL_ROUNDS = 120, 200
HELD_OUT_FIRST_SEED = 100


@dataclass(frozen=True)
class RobustnessSettings:
    """What `fedmoe robustness` runs (env FEDMOE_ROBUSTNESS_*, or the flags)."""

    out: Path = setting(
        "FEDMOE_ROBUSTNESS_OUT", Path("robustness"), "output directory (summary.json, plot)"
    )
    quick: bool = setting(
        "FEDMOE_ROBUSTNESS_QUICK",
        False,
        f"quick plan: {QUICK_SEEDS} seeds, {QUICK_ROUNDS} rounds (full: {FULL_SEEDS} seeds, "
        f"{FULL_ROUNDS} rounds) unless --seeds/--rounds say otherwise",
    )
    seeds: int = setting("FEDMOE_ROBUSTNESS_SEEDS", 0, "paired seeds (0: the plan's)")
    first_seed: int = setting(
        "FEDMOE_ROBUSTNESS_FIRST_SEED",
        HELD_OUT_FIRST_SEED,
        "seeds are first..first+N-1 (held out: 100 on; tuning used 0-19)",
    )
    attackers: float = setting(
        "FEDMOE_ROBUSTNESS_ATTACKERS", 0.2, "malicious fraction of the fleet"
    )
    regime: str = setting("FEDMOE_ROBUSTNESS_REGIME", "fleet", f"data regime, one of {REGIMES}")
    rules: str = setting("FEDMOE_ROBUSTNESS_RULES", ",".join(RULES), "rules, comma list")
    devices: int = setting("FEDMOE_ROBUSTNESS_DEVICES", 30, "devices in the fleet (N)")
    model: str = setting("FEDMOE_ROBUSTNESS_MODEL", SMALL, f"model size, one of {MODEL_NAMES}")
    experts: int = setting(
        "FEDMOE_ROBUSTNESS_EXPERTS", 0, "experts (E; 0: the model's, small 8, large 64)"
    )
    rounds: int = setting("FEDMOE_ROBUSTNESS_ROUNDS", 0, "rounds per run (0: the plan's)")
    workers: int = setting("FEDMOE_ROBUSTNESS_WORKERS", 2, "worker processes (1: in process)")

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise SettingsError(f"FEDMOE_ROBUSTNESS_REGIME: {self.regime!r} not in {REGIMES}")
        for name in ("seeds", "rounds", "first_seed"):
            if getattr(self, name) < 0:
                raise SettingsError(f"FEDMOE_ROBUSTNESS_{name.upper()} must be >= 0")
        if self.workers < 1:
            raise SettingsError("FEDMOE_ROBUSTNESS_WORKERS must be >= 1")
        try:
            self.plan()
        except ValueError as exc:
            raise SettingsError(f"FEDMOE_ROBUSTNESS_*: {exc}") from exc

    def plan(self) -> RobustnessPlan:
        """The experiment these settings describe."""
        seeds = self.seeds or (QUICK_SEEDS if self.quick else FULL_SEEDS)
        rounds = self.rounds or (QUICK_ROUNDS if self.quick else FULL_ROUNDS)
        regime: Regime = "fleet" if self.regime == "fleet" else "label-skew"
        preset = model_preset(self.model)
        base = ScenarioConfig(
            regime=regime,
            num_devices=self.devices,
            num_experts=preset.experts(self.experts),
            deadline_s=preset.deadline(0.0),
            model=self.model,
        )
        return RobustnessPlan(
            base=base,
            seeds=tuple(range(self.first_seed, self.first_seed + seeds)),
            rounds=rounds,
            attackers=self.attackers,
            rules=tuple(r.strip() for r in self.rules.split(",") if r.strip()),
        )


def run(settings: RobustnessSettings) -> dict[str, Any]:
    """Run the experiment, write its files, and return the summary."""
    plan = settings.plan()
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    jobs = plan.jobs()
    results: list[tuple[str, str, RunResult]] = []
    with tqdm(total=len(jobs), desc="robustness", unit="run", file=sys.stderr) as bar:
        for result in unordered_map(run_robust_job, jobs, settings.workers):
            results.append(result)
            bar.update()
    summary = summarize_robustness(plan, results)
    summary["wall_seconds"] = time.perf_counter() - started
    summary["workers"] = settings.workers
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "robustness.md").write_text(robustness_table(summary))
    records = [
        {
            "condition": c,
            "rule": rule,
            "seed": r.seed,
            "initial_accuracy": r.initial_accuracy,
            "accuracy": [rec.accuracy for rec in r.records],
            "updates_rejected": [rec.updates_rejected for rec in r.records],
        }
        for c, rule, r in sorted(results, key=lambda x: (x[0], x[1], x[2].seed))
    ]
    (out / "runs.json").write_text(json.dumps(records) + "\n")
    grouped = {
        c: {
            rule: sorted((r for cc, rr, r in results if (cc, rr) == (c, rule)), key=_seed)
            for rule in plan.rules
        }
        for c in plan.conditions
    }
    plot_accuracy(grouped, out / "accuracy.png")
    return summary


def _seed(result: RunResult) -> int:
    return result.seed


def main(argv: list[str]) -> int:
    """Entry point of `fedmoe robustness`."""
    parser = argparse.ArgumentParser(
        prog="fedmoe robustness",
        description="aggregation rules against malicious devices, in the in-process simulation",
    )
    add_arguments(parser, RobustnessSettings)
    try:
        settings = from_args(RobustnessSettings, parser.parse_args(argv), os.environ)
    except SettingsError as exc:
        print(f"fedmoe robustness: {exc}", file=sys.stderr)
        return 2
    summary = run(settings)
    print(robustness_table(summary), end="")
    goal = summary["goal"]
    print(
        f"default {summary['default_rule']}: worst drop under attack "
        f"{goal['default_worst_drop']:.3f} (goal <= {goal['tolerance']}); "
        f"seeds {summary['seeds']}; {summary['wall_seconds']:.0f} s wall"
    )
    return 0
