"""The experiment: many paired federated runs and the centralized reference they aim for.

An experiment is a set of jobs, each one self-contained and picklable, so a caller can run them
in any order, in a process pool or in a loop (`fedmoe experiment` does the former):

1. `CentralJob` per (regime, seed): the same model trained on the seed's pooled training
   data (`moe.training.train_centralized`), evaluated on the seed's test set. A regime's
   centralized accuracy is the mean over its seeds, and its target, 0.8 × that, is fixed
   from these alone, before any federated run (and is the same for every strategy).
2. `RunJob` per (regime, strategy, seed): one `run_simulation`. Seeds are paired: for one
   seed every strategy sees the same split, fleet, availability, initial weights and
   training seeds (they all come from the `ScenarioConfig`). Fitness variants
   (`ExperimentPlan.variants`, e.g. the ablation's, `moe.simulation.ablation`) run the same
   way, one job per (regime, variant, seed), and report under the variant's name.

`summarize` reduces the results to the figures `summary.json` holds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from moe.aggregation.clipping import ClippedFedAvg
from moe.aggregation.registry import RULE_NAMES, make_rule
from moe.data import Regime
from moe.matching import (
    STRATEGY_NAMES,
    FitnessStrategy,
    FitnessWeights,
    MatchingStrategy,
    make_strategy,
)
from moe.scenario import ScenarioConfig, build_scenario
from moe.simulation.ablation import format_options
from moe.simulation.engine import run_simulation
from moe.simulation.records import RunResult
from moe.simulation.summary import (
    bootstrap_reduction_ci,
    json_float,
    median_censored,
    paired_outcomes,
    reduction_with_horizon,
    summarize_strategy,
)
from moe.training import evaluate, single_threaded_blas, train_centralized

# The centralized reference's recipe (momentum SGD on the pooled data). Measured on seeds 0-1:
# 20-40 epochs at lr 0.02-0.05 reach 0.80-0.87 (fleet) and 0.97-0.99 (label-skew); more epochs
# or other rates gained nothing.
CENTRAL_EPOCHS = 30
CENTRAL_LR = 0.05
CENTRAL_MOMENTUM = 0.9

# Target and second threshold, as fractions of the centralized accuracy.
TARGET_FRACTION = 0.8
SECOND_FRACTION = 0.9

# Strategies that are given the round deadline (they drop or avoid devices that would miss
# it): fitness's fair peers. `summarize` picks each regime's best peer among these.
DEADLINE_AWARE: frozenset[str] = frozenset(
    {"random-feasible", "least-loaded-feasible", "affinity-feasible", "oort", "flex-moe"}
)
OURS = "fitness"
# The paired bootstrap of `reduction_vs_best_peer_ci`.
CI_RESAMPLES = 2000
CI_LEVEL = 0.95


@dataclass(frozen=True, slots=True)
class ExperimentRegime:
    """One panel of the experiment: a data regime and what it changes in the scenario.

    Attributes:
        name: the panel's name in the summary.
        data: the data regime (`moe.data.REGIMES`).
        num_experts: E for this panel (None: the plan's).
    """

    name: str
    data: Regime
    num_experts: int | None = None


# `fleet-large` is the fleet with 32 experts: a round's ~15-20 expert slots are far fewer than
# the experts, the large-model case where the choice of experts decides what gets trained.
EXPERIMENT_REGIMES: Mapping[str, ExperimentRegime] = MappingProxyType(
    {
        "label-skew": ExperimentRegime("label-skew", "label-skew"),
        "fleet": ExperimentRegime("fleet", "fleet"),
        "fleet-large": ExperimentRegime("fleet-large", "fleet", num_experts=32),
    }
)


@dataclass(frozen=True, slots=True)
class CentralJob:
    """The centralized reference of one (regime, seed).

    Attributes:
        regime: the experiment regime's name.
        config: its scenario.
    """

    regime: str
    config: ScenarioConfig

    def run(self) -> tuple[str, int, float]:
        """(regime, seed, test accuracy of the model trained on the pooled data)."""
        with single_threaded_blas():
            sc = build_scenario(self.config)
            x, y = sc.data.pooled()
            parts = train_centralized(
                sc.model,
                x,
                y,
                epochs=CENTRAL_EPOCHS,
                seed=self.config.seed,
                lr=CENTRAL_LR,
                momentum=CENTRAL_MOMENTUM,
            )
            accuracy, _ = evaluate(sc.model, parts, sc.data.test_x, sc.data.test_y)
        return self.regime, self.config.seed, accuracy


@dataclass(frozen=True, slots=True)
class RunJob:
    """One federated run.

    Attributes:
        regime: the experiment regime's name (the result's `regime`).
        config: the scenario.
        strategy: the strategy's name.
        rounds: R.
        fitness_options: overrides of the fitness strategy's tuned configuration
            (`parse_fitness_options`); ignored for the other strategies.
        label: the result's `strategy` (a fitness variant's name); empty: the strategy's.
        aggregation: the aggregation rule of every part (`moe.aggregation.make_rule` name).
    """

    regime: str
    config: ScenarioConfig
    strategy: str
    rounds: int
    fitness_options: tuple[tuple[str, float], ...] = ()
    label: str = ""
    aggregation: str = ClippedFedAvg.name

    def run(self) -> RunResult:
        """The run's result (single-threaded BLAS: the caller runs jobs side by side)."""
        matcher = (
            fitness_strategy(dict(self.fitness_options))
            if self.strategy == FitnessStrategy.name
            else make_strategy(self.strategy)
        )
        with single_threaded_blas():
            rule = make_rule(self.aggregation)
            result = run_simulation(self.config, matcher, self.rounds, rule=rule)
        return replace(result, regime=self.regime, strategy=self.label or result.strategy)


# FitnessStrategy's constructor options that `parse_fitness_options` accepts besides weights.
_STRATEGY_OPTIONS = {
    "upper_slack": float,
    "min_clients": int,
    "equal_load": bool,
    "spread": bool,
}


def _known_options() -> set[str]:
    return {f.name for f in fields(FitnessWeights)} | set(_STRATEGY_OPTIONS)


def parse_fitness_options(spec: str) -> tuple[tuple[str, float], ...]:
    """``"quality=0.1,equal_load=0"`` → sorted (name, value) pairs; names are `FitnessWeights`
    fields or the strategy's `upper_slack`, `min_clients`, `equal_load`, `spread`.

    Raises:
        ValueError: an unknown name or a value that is not a number.
    """
    known = _known_options()
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise ValueError(
                f"fitness option {item!r}: expected NAME=VALUE, NAME in {sorted(known)}"
            )
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"fitness option {item!r}: {value!r} is not a number") from None
    return tuple(sorted(out.items()))


def fitness_strategy(options: Mapping[str, float]) -> MatchingStrategy:
    """The fitness strategy with `options` over its defaults (the tuned configuration)."""
    weights = FitnessWeights()
    weight_options = {k: v for k, v in options.items() if k not in _STRATEGY_OPTIONS}
    strategy_options = {
        k: _STRATEGY_OPTIONS[k](v) for k, v in options.items() if k in _STRATEGY_OPTIONS
    }
    return make_strategy(
        FitnessStrategy.name, weights=replace(weights, **weight_options), **strategy_options
    )


def run_job(job: CentralJob | RunJob) -> tuple[str, int, float] | RunResult:
    """Run one job (a module-level function, for process pools)."""
    return job.run()


@dataclass(frozen=True, slots=True)
class ExperimentPlan:
    """What an experiment runs.

    Attributes:
        regimes: data regimes, each its own panel and target.
        strategies: matching strategies (`moe.matching.make_strategy` names).
        seeds: scenario seeds, shared by every strategy (paired).
        rounds: R, federated rounds per run; a run that never reaches a threshold counts R+1.
        base: every other scenario setting (devices, experts, deadline, ...); its regime and
            seed are replaced per job.
        regime_rounds: R for particular regimes, overriding `rounds` (label-skew reaches its
            target within a few dozen rounds, fleet takes hundreds).
        fitness_options: overrides of the fitness strategy's tuned configuration.
        variants: extra fitness variants, run like strategies: name → options merged over
            `fitness_options`; their results carry the name as `strategy`.
        aggregation: the aggregation rule of every part in every run (the aggregator
            service's default, `clipped-fedavg`, unless told otherwise).
    """

    regimes: tuple[str, ...]
    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    rounds: int
    base: ScenarioConfig
    regime_rounds: Mapping[str, int] = field(default_factory=dict)
    fitness_options: tuple[tuple[str, float], ...] = ()
    variants: Mapping[str, tuple[tuple[str, float], ...]] = field(default_factory=dict)
    aggregation: str = ClippedFedAvg.name

    def __post_init__(self) -> None:
        if not (self.regimes and self.strategies and self.seeds):
            raise ValueError("an experiment needs at least one regime, strategy and seed")
        if self.aggregation not in RULE_NAMES:
            raise ValueError(f"aggregation {self.aggregation!r} not in {sorted(RULE_NAMES)}")
        clash = [v for v in self.variants if v in self.strategies or v in STRATEGY_NAMES]
        if clash:
            raise ValueError(f"fitness variants {clash} clash with strategy names")
        known = _known_options()
        bad = sorted({k for opts in self.variants.values() for k, _ in opts} - known)
        if bad:
            raise ValueError(f"fitness variant options {bad} not in {sorted(known)}")
        unknown = [g for g in self.regimes if g not in EXPERIMENT_REGIMES]
        if unknown:
            raise ValueError(f"unknown regimes {unknown}; expected {list(EXPERIMENT_REGIMES)}")
        if min(self.rounds_for(g) for g in self.regimes) < 1:
            raise ValueError("rounds must be >= 1")

    def rounds_for(self, regime: str) -> int:
        """R of `regime`."""
        return self.regime_rounds.get(regime, self.rounds)

    def config(self, regime: str, seed: int) -> ScenarioConfig:
        """The scenario of one (regime, seed)."""
        panel = EXPERIMENT_REGIMES[regime]
        experts = self.base.num_experts if panel.num_experts is None else panel.num_experts
        return replace(self.base, regime=panel.data, seed=seed, num_experts=experts)

    def central_jobs(self) -> list[CentralJob]:
        """One centralized reference per (regime, seed)."""
        return [CentralJob(g, self.config(g, s)) for g in self.regimes for s in self.seeds]

    @property
    def labels(self) -> tuple[str, ...]:
        """The names results carry: the strategies, then the fitness variants."""
        return (*self.strategies, *self.variants)

    def variant_options(self, name: str) -> tuple[tuple[str, float], ...]:
        """Variant `name`'s options merged over `fitness_options`, sorted."""
        return tuple(sorted({**dict(self.fitness_options), **dict(self.variants[name])}.items()))

    def run_jobs(self) -> list[RunJob]:
        """One federated run per (regime, strategy, seed), then per (regime, variant, seed)."""
        jobs = [
            RunJob(
                g,
                self.config(g, s),
                name,
                self.rounds_for(g),
                self.fitness_options,
                aggregation=self.aggregation,
            )
            for g in self.regimes
            for name in self.strategies
            for s in self.seeds
        ]
        jobs += [
            RunJob(
                g,
                self.config(g, s),
                FitnessStrategy.name,
                self.rounds_for(g),
                self.variant_options(name),
                label=name,
                aggregation=self.aggregation,
            )
            for g in self.regimes
            for name in self.variants
            for s in self.seeds
        ]
        return jobs


def targets(
    plan: ExperimentPlan, central: Sequence[tuple[str, int, float]]
) -> dict[str, dict[str, Any]]:
    """Per regime: the centralized accuracy (mean over seeds, and per seed) and the target."""
    out: dict[str, dict[str, Any]] = {}
    for regime in plan.regimes:
        per_seed = sorted((s, a) for g, s, a in central if g == regime)
        mean = statistics.fmean(a for _, a in per_seed)
        out[regime] = {
            "centralized_accuracy": mean,
            "centralized_accuracy_per_seed": [a for _, a in per_seed],
            "target_accuracy": TARGET_FRACTION * mean,
        }
    return out


def best_peer(strategies: Mapping[str, Mapping[str, Any]], peers: Collection[str]) -> str | None:
    """The strategy among `peers` (fitness excluded) with the fewest median rounds to target;
    ties go to fewer censored runs, then to the name. None when no peer ran."""
    names = [n for n in strategies if n in peers and n != OURS]
    if not names:
        return None

    def rank(name: str) -> tuple[float, int, str]:
        per_seed = strategies[name]["rounds_to_target"]
        median = median_censored(per_seed) if per_seed else math.inf
        return median, strategies[name]["censored"], name

    return min(names, key=rank)


def _versus(
    strategies: Mapping[str, Mapping[str, Any]], ours: str, base: str | None, horizon: int
) -> dict[str, Any]:
    """Reduction of `ours`' median rounds to target against `base`'s, its censoring flag and
    its paired-bootstrap CI ([low, high]); Nones when either strategy is missing."""
    if base is None or ours not in strategies or base not in strategies:
        return {"reduction": None, "censored": False, "ci": None}
    a = strategies[ours]["rounds_to_target"]
    b = strategies[base]["rounds_to_target"]
    value, censored = reduction_with_horizon(a, b, horizon)
    ci = None
    if value is not None and len(a) == len(b) and a:
        low, high = bootstrap_reduction_ci(
            a, b, resamples=CI_RESAMPLES, level=CI_LEVEL, horizon=horizon
        )
        ci = [json_float(low), json_float(high)]
    return {"reduction": value, "censored": censored, "ci": ci}


def summarize(
    plan: ExperimentPlan,
    reference: Mapping[str, Mapping[str, Any]],
    runs: Sequence[RunResult],
    *,
    deadline_aware: Collection[str] = DEADLINE_AWARE,
) -> dict[str, Any]:
    """The summary's figures (JSON-ready).

    Per regime: its reference and target; per strategy, then per fitness variant (never a
    best-peer candidate), its figures (`summarize_strategy`;
    censored medians are null) and ``wins_vs_fitness`` (its paired faster / tied / slower
    counts of rounds to target against fitness, from its own point of view; None for fitness
    or without it); fitness against random (``reduction_vs_random``,
    ``reduction_vs_random_censored``, ``fitness_vs_random_seeds``; None without either);
    and fitness against its best peer, the `deadline_aware` strategy with the fewest median
    rounds (``best_peer``, ``reduction_vs_best_peer``, ``reduction_vs_best_peer_censored``,
    ``reduction_vs_best_peer_ci``).

    A reduction is 1 − fitness' median rounds to target / the other's. A censored median
    (never reached in more than half the seeds) counts as the horizon R + 1 and sets the
    ``_censored`` flag: the reduction is then a bound (a lower bound when the other's median
    is censored, an upper one when fitness's is); when both are censored it is None. The CI
    is a paired bootstrap over seeds (`CI_RESAMPLES`, `CI_LEVEL`) with censored runs at R + 1.

    Top level: ``reduction_vs_random`` (the ``fleet`` regime's),
    ``reduction_vs_best_peer`` ({regime: its reduction}) and ``variants`` ({variant: its
    options, `format_options`}).
    """
    regimes: dict[str, Any] = {}
    for regime in plan.regimes:
        ref = reference[regime]
        horizon = plan.rounds_for(regime) + 1
        strategies: dict[str, dict[str, Any]] = {}
        for name in plan.labels:
            mine = [r for r in runs if r.regime == regime and r.strategy == name]
            strategies[name] = summarize_strategy(
                mine,
                ref["target_accuracy"],
                ref["centralized_accuracy"],
                second_fraction=SECOND_FRACTION,
            )
        ours = strategies.get(OURS)
        for name, figures in strategies.items():
            figures["wins_vs_fitness"] = (
                paired_outcomes(figures["rounds_to_target"], ours["rounds_to_target"])
                if ours is not None and name != OURS
                else None
            )
        bytes_ratio = [
            s["bytes_per_device_vs_whole_model"]
            for s in strategies.values()
            if s["bytes_per_device_vs_whole_model"] is not None
        ]
        vs_random = _versus(strategies, OURS, "random", horizon)
        # Variants are fitness itself, never its peer (their names are not deadline-aware
        # peers either; this keeps it so whatever `deadline_aware` holds).
        peers = {n: f for n, f in strategies.items() if n not in plan.variants}
        peer = best_peer(peers, deadline_aware)
        vs_peer = _versus(strategies, OURS, peer, horizon)
        regimes[regime] = {
            **ref,
            "rounds": plan.rounds_for(regime),
            "strategies": strategies,
            "reduction_vs_random": vs_random["reduction"],
            "reduction_vs_random_censored": vs_random["censored"],
            "fitness_vs_random_seeds": (
                paired_outcomes(
                    strategies[OURS]["rounds_to_target"], strategies["random"]["rounds_to_target"]
                )
                if OURS in strategies and "random" in strategies
                else None
            ),
            "best_peer": peer,
            "reduction_vs_best_peer": vs_peer["reduction"],
            "reduction_vs_best_peer_censored": vs_peer["censored"],
            "reduction_vs_best_peer_ci": vs_peer["ci"],
            "bytes_per_device_vs_whole_model": (
                statistics.fmean(bytes_ratio) if bytes_ratio else None
            ),
        }
    top = regimes.get("fleet", {}).get("reduction_vs_random")
    return {
        "reduction_vs_random": top,
        "reduction_vs_best_peer": {g: fig["reduction_vs_best_peer"] for g, fig in regimes.items()},
        "target_fraction": TARGET_FRACTION,
        "seeds": list(plan.seeds),
        "strategies": list(plan.strategies),
        "fitness_options": dict(plan.fitness_options),
        "variants": {name: format_options(opts) for name, opts in plan.variants.items()},
        "scenario": {
            "model": plan.base.model,
            "num_devices": plan.base.num_devices,
            "num_experts": plan.base.num_experts,
            "top_k": plan.base.top_k,
            "alpha": plan.base.alpha,
            "epochs": plan.base.epochs,
            "batch_size": plan.base.batch_size,
            "lr": plan.base.lr,
            "deadline_s": plan.base.deadline_s,
        },
        "regimes": regimes,
    }
