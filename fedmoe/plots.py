"""Figures of federated runs: accuracy and expert-load CV per round, one panel per regime."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # the OO API: no pyplot global state, no display

from moe.simulation.records import RunResult

Runs = Mapping[str, Mapping[str, Sequence[RunResult]]]  # regime -> strategy -> runs


def _series(runs: Sequence[RunResult], attr: str, with_initial: bool) -> np.ndarray:
    length = min(len(r.records) for r in runs)
    rows = [[getattr(rec, attr) for rec in r.records[:length]] for r in runs]
    if with_initial:
        rows = [[r.initial_accuracy, *row] for r, row in zip(runs, rows, strict=True)]
    return np.array(rows)


def plot_accuracy(runs: Runs, path: Path, targets: Mapping[str, float] | None = None) -> None:
    """Test accuracy per round from round 0 (the initial model), with each regime's target."""
    plot_per_round(runs, "accuracy", "test accuracy", path, targets, with_initial=True)


def plot_load(runs: Runs, path: Path) -> None:
    """CV of clients assigned per expert, per round."""
    plot_per_round(runs, "load_cv", "expert-load CV (clients per expert)", path)


def plot_per_round(
    runs: Runs,
    attr: str,
    ylabel: str,
    path: Path,
    targets: Mapping[str, float] | None = None,
    *,
    with_initial: bool = False,
) -> None:
    """Median over seeds with a min–max band, per strategy; one panel per regime.

    With `with_initial` the series starts at round 0 with each run's initial accuracy.
    """
    regimes = list(runs)
    fig = Figure(figsize=(6 * len(regimes), 4))
    axes = fig.subplots(1, len(regimes), squeeze=False)
    for ax, regime in zip(axes[0], regimes, strict=True):
        for strategy, strategy_runs in runs[regime].items():
            if not strategy_runs:
                continue
            values = _series(strategy_runs, attr, with_initial)
            first = 0 if with_initial else 1
            rounds = np.arange(first, first + values.shape[1])
            (line,) = ax.plot(rounds, np.median(values, axis=0), label=strategy)
            ax.fill_between(
                rounds, values.min(axis=0), values.max(axis=0), alpha=0.15, color=line.get_color()
            )
        if targets and regime in targets:
            ax.axhline(targets[regime], color="grey", linestyle="--", label="target")
        ax.set_title(regime)
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
