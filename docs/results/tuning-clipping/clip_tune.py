"""Tuning seeds 0-19 only: how `clipped-fedavg`'s parameters change fitness and Oort.

    .venv/bin/python docs/results/tuning-clipping/clip_tune.py [REGIME] > log

Per variant of the rule, fitness and Oort on seeds 0-19 of REGIME (default `fleet`), 400
rounds each, the experiment's target (0.8 × the centralized accuracy, the mean over the
seeds); prints one line per variant and writes `clip_tune_REGIME.json` in the working
directory (the committed `fleet.json` is that file).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmoe.commands.experiment import ExperimentSettings
from fedmoe.pool import unordered_map
from fedmoe.settings import load_settings
from moe.aggregation.registry import make_rule
from moe.matching import make_strategy
from moe.simulation.engine import run_simulation
from moe.simulation.experiment import CentralJob, fitness_strategy
from moe.simulation.summary import median_censored, rounds_to_target
from moe.training import single_threaded_blas

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "clip2-reject2 (default)": ("clipped-fedavg", {}),
    "clip2-no-reject": ("clipped-fedavg", {"reject_above": None}),
    "clip4-reject2": ("clipped-fedavg", {"multiplier": 4.0}),
    "fedavg": ("fedavg", {}),
}
STRATEGIES = ("fitness", "oort")
SEEDS = range(20)
ROUNDS = 400


@dataclass(frozen=True)
class Job:
    regime: str
    variant: str
    strategy: str
    seed: int


def _plan(regime: str) -> Any:
    return load_settings(
        ExperimentSettings, {}, regimes=regime, strategies=",".join(STRATEGIES)
    ).plan()


def run(job: Job | CentralJob) -> Any:
    if isinstance(job, CentralJob):
        return job.run()
    config = _plan(job.regime).config(job.regime, job.seed)
    name, params = VARIANTS[job.variant]
    matcher = fitness_strategy({}) if job.strategy == "fitness" else make_strategy(job.strategy)
    with single_threaded_blas():
        result = run_simulation(config, matcher, ROUNDS, rule=make_rule(name, **params))
    accuracy = [r.accuracy for r in result.records]
    rejected = statistics.fmean(r.updates_rejected for r in result.records)
    return job, accuracy, rejected


def _row(results: dict[tuple[str, str, int], tuple[int | None, float, float]], variant: str) -> Any:
    row: dict[str, Any] = {}
    for strategy in STRATEGIES:
        rounds = [results[(variant, strategy, s)][0] for s in SEEDS]
        median = median_censored(rounds)
        row[strategy] = {
            "rounds_to_target": rounds,
            "median": None if median == float("inf") else median,
            "censored": rounds.count(None),
            "rejected_per_round": round(
                statistics.fmean(results[(variant, strategy, s)][1] for s in SEEDS), 2
            ),
            "final_accuracy_mean": round(
                statistics.fmean(results[(variant, strategy, s)][2] for s in SEEDS), 3
            ),
        }

    def key(r: int | None) -> int:
        return ROUNDS + 1 if r is None else r

    pairs = list(
        zip(row["fitness"]["rounds_to_target"], row["oort"]["rounds_to_target"], strict=True)
    )
    row["fitness_faster_tied_slower_vs_oort"] = [
        sum(key(a) < key(b) for a, b in pairs),
        sum(key(a) == key(b) for a, b in pairs),
        sum(key(a) > key(b) for a, b in pairs),
    ]
    return row


def main(regime: str) -> None:
    started = time.time()
    plan = _plan(regime)
    central = list(
        unordered_map(run, [CentralJob(regime, plan.config(regime, s)) for s in SEEDS], 2)
    )
    target = 0.8 * statistics.fmean(a for _, _, a in central)
    jobs = [Job(regime, v, s, seed) for v in VARIANTS for s in STRATEGIES for seed in SEEDS]
    results = {}
    for job, accuracy, rejected in unordered_map(run, jobs, 2):
        results[(job.variant, job.strategy, job.seed)] = (
            rounds_to_target(accuracy, target),
            rejected,
            accuracy[-1],
        )
    out: dict[str, Any] = {"regime": regime, "target": target, "seeds": list(SEEDS)}
    out |= {"rounds": ROUNDS, "variants": {v: _row(results, v) for v in VARIANTS}}
    for variant, row in out["variants"].items():
        brief = {
            s: {k: v for k, v in row[s].items() if k != "rounds_to_target"} for s in STRATEGIES
        }
        print(variant, json.dumps(brief), row["fitness_faster_tied_slower_vs_oort"], flush=True)
    out["wall_s"] = round(time.time() - started)
    Path(f"clip_tune_{regime}.json").write_text(json.dumps(out, indent=1))
    print("wall", out["wall_s"])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fleet")
