"""`fedmoe experiment`: the in-process federated simulation, many paired runs, one summary.

    fedmoe experiment --out DIR [--quick] [--seeds N] [--strategies fitness,random,...]
                      [--regimes fleet,label-skew] [--devices N] [--model small|large]
                      [--experts E] [--rounds R]
                      [--workers W] [--fitness OPTIONS] [--ablation]

First the centralized reference of every (regime, seed) (the target is 0.8 × its mean, fixed
before any federated run), then one `moe.simulation.run_simulation` per (regime, strategy,
seed), in a process pool of `--workers` processes (BLAS single-threaded in each, so W
processes use W cores). Writes DIR/summary.json (`moe.simulation.experiment.summarize`),
DIR/runs.json (every run's per-round accuracy, load CV and late updates), DIR/accuracy.png and
DIR/load.png, and prints the headline figures. A tqdm bar on stderr counts finished jobs.

--ablation adds the fitness strategy's ablation (`moe.simulation.ablation`): every ingredient
of the (tuned, --fitness-overridden) configuration removed, and each kept alone, run as extra
paired strategies; DIR/ablation.md tabulates them against fitness and the best peer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fedmoe.errors import SettingsError
from fedmoe.plots import plot_accuracy, plot_load
from fedmoe.pool import unordered_map
from fedmoe.settings import add_arguments, from_args, setting
from moe.matching import STRATEGY_NAMES
from moe.presets import MODEL_NAMES, SMALL, model_preset
from moe.scenario import ScenarioConfig
from moe.simulation.ablation import ablation_table, ablation_variants
from moe.simulation.experiment import (
    EXPERIMENT_REGIMES,
    OURS,
    CentralJob,
    ExperimentPlan,
    RunJob,
    fitness_strategy,
    parse_fitness_options,
    run_job,
    summarize,
    targets,
)
from moe.simulation.records import RunResult

# Rounds per regime: label-skew reaches 0.8× centralized in ~10-30 rounds, fleet in ~70-300
# (random matching needed > 250 in 4 of 20 seeds). A run that never reaches it counts R + 1.
QUICK_ROUNDS: dict[str, int] = {"fleet": 250, "fleet-large": 250, "label-skew": 60}
FULL_ROUNDS: dict[str, int] = {"fleet": 400, "fleet-large": 400, "label-skew": 100}
# --quick: ≥ 5 seeds × 4 strategies × 2 regimes within 10 minutes on 2 busy cores.
QUICK_SEEDS, FULL_SEEDS = 10, 20


@dataclass(frozen=True)
class ExperimentSettings:
    """What `fedmoe experiment` runs (env FEDMOE_EXPERIMENT_*, or the flags)."""

    out: Path = setting(
        "FEDMOE_EXPERIMENT_OUT", Path("experiment"), "output directory (summary.json, plots)"
    )
    quick: bool = setting(
        "FEDMOE_EXPERIMENT_QUICK",
        False,
        f"quick plan: {QUICK_SEEDS} seeds, rounds {QUICK_ROUNDS} (full: {FULL_SEEDS} seeds, "
        f"rounds {FULL_ROUNDS}) unless --seeds/--rounds say otherwise",
    )
    seeds: int = setting("FEDMOE_EXPERIMENT_SEEDS", 0, "paired seeds (0: the plan's)")
    first_seed: int = setting("FEDMOE_EXPERIMENT_FIRST_SEED", 0, "seeds are first..first+N-1")
    strategies: str = setting(
        "FEDMOE_EXPERIMENT_STRATEGIES", ",".join(STRATEGY_NAMES), "matching strategies, comma list"
    )
    regimes: str = setting(
        "FEDMOE_EXPERIMENT_REGIMES",
        ",".join(EXPERIMENT_REGIMES),
        "regimes, comma list (fleet-large: the fleet with 32 experts)",
    )
    devices: int = setting("FEDMOE_EXPERIMENT_DEVICES", 30, "devices in the fleet (N)")
    model: str = setting("FEDMOE_EXPERIMENT_MODEL", SMALL, f"model size, one of {MODEL_NAMES}")
    experts: int = setting(
        "FEDMOE_EXPERIMENT_EXPERTS", 0, "experts (E; 0: the model's, small 8, large 64)"
    )
    top_k: int = setting("FEDMOE_EXPERIMENT_TOP_K", 2, "experts each sample is routed to")
    alpha: float = setting("FEDMOE_EXPERIMENT_ALPHA", 0.1, "Dirichlet concentration of labels")
    epochs: int = setting("FEDMOE_EXPERIMENT_EPOCHS", 2, "local epochs per round")
    deadline_s: float = setting(
        "FEDMOE_EXPERIMENT_DEADLINE_S",
        0.0,
        "round deadline, simulated seconds (0: the model's, small 1.5, large ~69)",
    )
    rounds: int = setting(
        "FEDMOE_EXPERIMENT_ROUNDS", 0, "rounds per run in every regime (0: the plan's)"
    )
    workers: int = setting("FEDMOE_EXPERIMENT_WORKERS", 2, "worker processes (1: in process)")
    aggregation: str = setting(
        "FEDMOE_EXPERIMENT_AGGREGATION",
        "clipped-fedavg",
        "aggregation rule of every part in every run: clipped-fedavg (the aggregator's "
        "default), fedavg, median or trimmed-mean",
    )
    fitness: str = setting(
        "FEDMOE_EXPERIMENT_FITNESS",
        "",
        "overrides of the tuned fitness strategy, e.g. 'quality=0.2,equal_load=0' "
        "(FitnessWeights fields, upper_slack, min_clients, equal_load, spread)",
    )
    ablation: bool = setting(
        "FEDMOE_EXPERIMENT_ABLATION",
        False,
        "also run fitness with each ingredient removed and each alone (needs fitness among "
        "the strategies); writes ablation.md",
    )

    def __post_init__(self) -> None:
        unknown = [s for s in self.strategy_names if s not in STRATEGY_NAMES]
        if unknown or not self.strategy_names:
            raise SettingsError(f"FEDMOE_EXPERIMENT_STRATEGIES: {unknown} not in {STRATEGY_NAMES}")
        bad = [g for g in self.regime_names if g not in EXPERIMENT_REGIMES]
        if bad or not self.regime_names:
            raise SettingsError(
                f"FEDMOE_EXPERIMENT_REGIMES: {bad} not in {tuple(EXPERIMENT_REGIMES)}"
            )
        for name in ("seeds", "rounds", "first_seed"):
            if getattr(self, name) < 0:
                raise SettingsError(f"FEDMOE_EXPERIMENT_{name.upper()} must be >= 0")
        if self.workers < 1:
            raise SettingsError("FEDMOE_EXPERIMENT_WORKERS must be >= 1")
        if self.ablation and OURS not in self.strategy_names:
            raise SettingsError(f"FEDMOE_EXPERIMENT_ABLATION needs {OURS!r} in the strategies")
        try:
            self.plan()
        except ValueError as exc:
            raise SettingsError(f"FEDMOE_EXPERIMENT_*: {exc}") from exc

    @property
    def strategy_names(self) -> tuple[str, ...]:
        """The strategies, in the order given."""
        return tuple(s.strip() for s in self.strategies.split(",") if s.strip())

    @property
    def regime_names(self) -> tuple[str, ...]:
        """The regimes, in the order given."""
        return tuple(g.strip() for g in self.regimes.split(",") if g.strip())

    def plan(self) -> ExperimentPlan:
        """The experiment these settings describe."""
        seeds = self.seeds or (QUICK_SEEDS if self.quick else FULL_SEEDS)
        per_regime = QUICK_ROUNDS if self.quick else FULL_ROUNDS
        regimes = tuple(dict.fromkeys(self.regime_names))
        options = parse_fitness_options(self.fitness)
        preset = model_preset(self.model)
        base = ScenarioConfig(
            num_devices=self.devices,
            num_experts=preset.experts(self.experts),
            top_k=self.top_k,
            alpha=self.alpha,
            epochs=self.epochs,
            deadline_s=preset.deadline(self.deadline_s),
            model=self.model,
        )
        return ExperimentPlan(
            regimes=regimes,
            strategies=self.strategy_names,
            seeds=tuple(range(self.first_seed, self.first_seed + seeds)),
            rounds=self.rounds or max(per_regime.values()),
            base=base,
            regime_rounds={} if self.rounds else per_regime,
            fitness_options=options,
            variants=ablation_variants(fitness_strategy(dict(options))) if self.ablation else {},
            aggregation=self.aggregation,
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedmoe experiment",
        description="in-process federated MoE simulation: paired runs of every strategy",
    )
    add_arguments(parser, ExperimentSettings)
    return parser


Job = CentralJob | RunJob


def run(settings: ExperimentSettings) -> dict[str, Any]:
    """Run the experiment, write its files, and return the summary."""
    plan = settings.plan()
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    central_jobs, run_jobs = plan.central_jobs(), plan.run_jobs()
    central: list[tuple[str, int, float]] = []
    runs: list[RunResult] = []
    with tqdm(
        total=len(central_jobs) + len(run_jobs), desc="experiment", unit="run", file=sys.stderr
    ) as bar:
        for result in unordered_map(run_job, central_jobs, settings.workers):
            if isinstance(result, RunResult):
                raise TypeError("a centralized job returned a run")
            central.append(result)
            bar.update()
        # The targets are fixed here, from the centralized runs alone.
        reference = targets(plan, central)
        for result in unordered_map(run_job, run_jobs, settings.workers):
            if not isinstance(result, RunResult):
                raise TypeError("a federated job returned no run")
            runs.append(result)
            bar.update()
    summary = summarize(plan, reference, runs)
    summary["wall_seconds"] = time.perf_counter() - started
    summary["workers"] = settings.workers
    summary["aggregation"] = plan.aggregation
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "runs.json").write_text(json.dumps([_run_record(r) for r in runs]) + "\n")
    if plan.variants:
        (out / "ablation.md").write_text(ablation_table(summary))
    grouped: dict[str, dict[str, list[RunResult]]] = {
        str(g): {
            s: sorted((r for r in runs if (r.regime, r.strategy) == (g, s)), key=_seed)
            for s in plan.strategies
        }
        for g in plan.regimes
    }
    plot_accuracy(
        grouped, out / "accuracy.png", {g: reference[g]["target_accuracy"] for g in plan.regimes}
    )
    plot_load(grouped, out / "load.png")
    return summary


def _seed(run: RunResult) -> int:
    return run.seed


def _run_record(run: RunResult) -> dict[str, Any]:
    return {
        "regime": run.regime,
        "strategy": run.strategy,
        "seed": run.seed,
        "initial_accuracy": run.initial_accuracy,
        "whole_model_bytes": run.whole_model_bytes,
        "rounds": [asdict(rec) for rec in run.records],
    }


def _report(summary: dict[str, Any]) -> str:
    """The headline figures: per regime fitness against random and its best peer, then per
    strategy its median rounds to target (">R" when censored), censored seeds, paired wins
    against fitness, time and bytes to target, load CV."""
    lines = [f"reduction_vs_random (fleet): {_fmt(summary['reduction_vs_random'])}"]
    for regime, fig in summary["regimes"].items():
        horizon = fig["rounds"]
        ci = fig.get("reduction_vs_best_peer_ci")
        ci_text = f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""
        bound = " (censored: bound)" if fig.get("reduction_vs_best_peer_censored") else ""
        lines.append(
            f"{regime}: centralized {fig['centralized_accuracy']:.3f}, target "
            f"{fig['target_accuracy']:.3f}, R {horizon}, reduction vs random "
            f"{_fmt(fig['reduction_vs_random'])}, fitness vs random seeds "
            f"{fig['fitness_vs_random_seeds']}"
        )
        lines.append(
            f"  best peer {fig.get('best_peer') or 'n/a'}: reduction "
            f"{_fmt(fig.get('reduction_vs_best_peer'))}{ci_text}{bound}"
        )
        for name, s in fig["strategies"].items():
            median = s["rounds_to_target_median"]
            rounds = f">{horizon}" if median is None else f"{median:g}"
            w = s.get("wins_vs_fitness")
            vs = f"{w['faster']}/{w['tied']}/{w['slower']}" if w else "-"
            lines.append(
                f"  {name:<22} rounds→target median {rounds:>6}  censored {s['censored']}"
                f"  vs fitness f/t/s {vs:>8}  time {_fmt(s['time_to_target_median'], '.0f')} s"
                f"  bytes {_fmt(s['bytes_to_target_median'], '.3g')}"
                f"  load CV {s['load_cv_mean']:.3f}"
            )
    lines.append(f"wall {summary['wall_seconds']:.0f} s")
    return "\n".join(lines)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    """`value` formatted; "n/a" when None (e.g. a censored median, written null)."""
    return "n/a" if value is None else format(value, spec)


def main(argv: list[str]) -> int:
    """Entry point of `fedmoe experiment`."""
    args = _parser().parse_args(argv)
    try:
        settings = from_args(ExperimentSettings, args, os.environ)
    except SettingsError as exc:
        print(f"fedmoe experiment: {exc}", file=sys.stderr)
        return 2
    summary = run(settings)
    print(_report(summary))
    extra = ", ablation.md" if settings.ablation else ""
    print(f"wrote {settings.out / 'summary.json'}, accuracy.png, load.png, runs.json{extra}")
    return 0
