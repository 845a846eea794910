"""Ablation of the fitness strategy: each ingredient removed, and each kept alone.

An ingredient is a part of the fitness strategy that can be switched off with the options
`moe.simulation.experiment.parse_fitness_options` understands (`FitnessWeights` fields and the
strategy's `upper_slack`, `min_clients`, `equal_load`, `spread`); `INGREDIENTS` maps each to the
overrides that remove it. For every ingredient present in the tuned configuration,
`ablation_variants` gives two fitness variants:

- ``fitness-no-<ingredient>``: that ingredient removed, everything else as tuned;
- ``fitness-only-<term>``: one term of the score kept, the other present terms removed (the
  assignment policies, load and spread, stay).

The experiment runs them like strategies (`ExperimentPlan.variants`), so the paired results
say where a gain of fitness over its peers comes from. `ablation_table` renders the summary's
figures of fitness, every variant and the best peer as markdown (``ablation.md``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import fields
from types import MappingProxyType
from typing import Any

from moe.matching import FitnessStrategy, FitnessWeights, MatchingStrategy, make_strategy

Options = tuple[tuple[str, float], ...]

# Ingredient → the option overrides that remove it.
INGREDIENTS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "affinity": MappingProxyType({"affinity": 0.0}),
        "utility": MappingProxyType({"utility": 0.0}),
        "quality": MappingProxyType({"quality": 0.0}),
        "exploration": MappingProxyType({"exploration": 0.0}),
        "capability": MappingProxyType({"capability": 0.0}),
        # The load term, the equal-load policy, and the slack policy's ceiling and floors.
        "load": MappingProxyType(
            {"load": 0.0, "equal_load": 0.0, "upper_slack": math.inf, "min_clients": 0.0}
        ),
        "spread": MappingProxyType({"spread": 0.0}),
    }
)

# The score's terms; the others (load, spread) are policies of the assignment. An "only"
# variant keeps one term of the score and the policies: a score of the load term alone, or of
# nothing, would assign no expert at all (every score <= 0), which measures nothing.
SCORE_INGREDIENTS = frozenset({"affinity", "utility", "quality", "exploration", "capability"})

NO_PREFIX = "fitness-no-"
ONLY_PREFIX = "fitness-only-"

_WEIGHT_NAMES = frozenset(f.name for f in fields(FitnessWeights))


def option_value(strategy: FitnessStrategy, name: str) -> float:
    """The value of option `name` (a `FitnessWeights` field or a strategy attribute) in
    `strategy`, as a float (flags: 1.0 / 0.0)."""
    if name in _WEIGHT_NAMES:
        return float(getattr(strategy.weights, name))
    return float(getattr(strategy, name))


def present_ingredients(strategy: FitnessStrategy) -> tuple[str, ...]:
    """The ingredients `strategy` uses: those whose removal would change any option (a weight
    above 0, a flag on, a finite slack, a floor above 0), in `INGREDIENTS` order."""
    return tuple(
        name
        for name, removal in INGREDIENTS.items()
        if any(option_value(strategy, k) != v for k, v in removal.items())
    )


def _sorted(options: Mapping[str, float]) -> Options:
    return tuple(sorted(options.items()))


def ablation_variants(tuned: MatchingStrategy | None = None) -> dict[str, Options]:
    """``fitness-no-<x>`` for every ingredient x present in `tuned`, then ``fitness-only-<x>``
    for every present score term x (the other present score terms removed, the policies kept)
    (default: `make_strategy("fitness")`, the tuned configuration), each with its options as
    sorted (name, value) pairs, to merge over the configuration `tuned` was built with.

    Raises:
        TypeError: `tuned` is not a fitness strategy.
    """
    strategy = make_strategy(FitnessStrategy.name) if tuned is None else tuned
    if not isinstance(strategy, FitnessStrategy):
        raise TypeError(f"ablation needs a FitnessStrategy, got {type(strategy).__name__}")
    present = present_ingredients(strategy)
    out: dict[str, Options] = {}
    for name in present:
        out[NO_PREFIX + name] = _sorted(INGREDIENTS[name])
    terms = [name for name in present if name in SCORE_INGREDIENTS]
    for name in terms:
        others: dict[str, float] = {}
        for other in terms:
            if other != name:
                others.update(INGREDIENTS[other])
        out[ONLY_PREFIX + name] = _sorted(others)
    return out


def format_options(options: Options) -> str:
    """``"equal_load=0,load=0,upper_slack=inf"``: `options` in the form
    `parse_fitness_options` reads back."""
    return ",".join(f"{name}={value:g}" for name, value in options)


def _rounds(figures: Mapping[str, Any], horizon: int) -> str:
    median = figures.get("rounds_to_target_median")
    if median is not None:
        return f"{median:g}"
    return f">{horizon}" if figures.get("rounds_to_target") else "n/a"


def _wins(figures: Mapping[str, Any]) -> str:
    w = figures.get("wins_vs_fitness")
    return f"{w['faster']}/{w['tied']}/{w['slower']}" if w else "—"


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _row(label: str, figures: Mapping[str, Any], horizon: int) -> str:
    cells: Sequence[str] = (
        label,
        _rounds(figures, horizon),
        str(figures.get("censored", "n/a")),
        _wins(figures),
        _number(figures.get("load_cv_mean"), ".3f"),
        _number(figures.get("late_updates_mean"), ".2f"),
    )
    return "| " + " | ".join(cells) + " |"


def ablation_table(summary: Mapping[str, Any]) -> str:
    """``ablation.md``: per regime a table of fitness, every variant (`summary["variants"]`,
    in order) and the regime's best peer, with median rounds to target (">R" when censored),
    censored seeds, paired faster/tied/slower against fitness, mean load CV and mean late
    updates per round. Rows whose strategy did not run are left out."""
    variants: Mapping[str, str] = summary.get("variants", {})
    lines = [
        "# Ablation of the fitness strategy",
        "",
        "`fitness-no-X`: fitness with ingredient X removed; `fitness-only-X`: the score's "
        "term X alone (the other terms removed, load and spread policies kept). Rounds to "
        "target: median over the paired seeds (`>R`: censored, "
        "not reached within R rounds in more than half of them); censored: seeds that never "
        "reached it; vs fitness: seeds where the row reached it faster / tied / slower than "
        "fitness; load CV and late updates: means per round.",
    ]
    header = (
        "| strategy | rounds to target (median) | censored | vs fitness f/t/s "
        "| load CV mean | late updates / round |"
    )
    for regime, fig in summary["regimes"].items():
        horizon = int(fig["rounds"])
        strategies: Mapping[str, Mapping[str, Any]] = fig["strategies"]
        rows: list[tuple[str, str]] = [("fitness", "fitness")]
        rows += [(name, name) for name in variants]
        peer = fig.get("best_peer")
        if peer is not None:
            rows.append((peer, f"{peer} (best peer)"))
        target = fig.get("target_accuracy")
        lines += [
            "",
            f"## {regime} (R = {horizon}, target accuracy {_number(target, '.3f')})",
            "",
            header,
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            _row(label, strategies[name], horizon) for name, label in rows if name in strategies
        ]
    if variants:
        lines += ["", "## Variants", "", "| variant | options |", "|---|---|"]
        lines += [
            f"| {name} | `{spec}` |" if spec else f"| {name} | — |"
            for name, spec in variants.items()
        ]
    return "\n".join(lines) + "\n"
