from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from moe.matching import FitnessStrategy, FitnessWeights, make_strategy
from moe.scenario import ScenarioConfig
from moe.simulation.ablation import (
    INGREDIENTS,
    SCORE_INGREDIENTS,
    ablation_table,
    ablation_variants,
    format_options,
    option_value,
    present_ingredients,
)
from moe.simulation.experiment import (
    ExperimentPlan,
    fitness_strategy,
    parse_fitness_options,
    summarize,
)
from moe.simulation.records import RoundRecord, RunResult


def _strategy(**weights: float) -> FitnessStrategy:
    return FitnessStrategy(FitnessWeights(**weights), equal_load=False, spread=False)


def test_only_present_ingredients_get_variants() -> None:
    # Every weight 0 but affinity and load; slack policy with its defaults (finite slack and
    # floors 1), spread off.
    s = _strategy(quality=0, capability=0, exploration=0, utility=0, affinity=0.5, load=0.3)
    assert present_ingredients(s) == ("affinity", "load")
    variants = ablation_variants(s)
    # "only" variants exist for the score's terms; load is a policy.
    assert list(variants) == [
        "fitness-no-affinity",
        "fitness-no-load",
        "fitness-only-affinity",
    ]
    # The slack policy alone keeps load present: its ceiling and floors are load balancing.
    no_load_weight = FitnessStrategy(
        FitnessWeights(quality=0, capability=0, exploration=0, utility=0, load=0), spread=True
    )
    assert present_ingredients(no_load_weight) == ("affinity", "load", "spread")
    bare = FitnessStrategy(
        FitnessWeights(quality=0, capability=0, exploration=0, utility=0, load=0, affinity=0),
        upper_slack=math.inf,
        min_clients=0,
        equal_load=False,
        spread=False,
    )
    assert ablation_variants(bare) == {}


def test_removal_options_are_the_ingredients() -> None:
    s = make_strategy("fitness")
    assert isinstance(s, FitnessStrategy)
    variants = ablation_variants()
    assert variants == ablation_variants(s)
    present = present_ingredients(s)
    assert set(variants) == {f"fitness-no-{x}" for x in present} | {
        f"fitness-only-{x}" for x in present if x in SCORE_INGREDIENTS
    }
    for name in present:
        assert variants[f"fitness-no-{name}"] == tuple(sorted(INGREDIENTS[name].items()))
        # Removing it changes the tuned configuration.
        assert any(option_value(s, k) != v for k, v in INGREDIENTS[name].items())
    assert variants["fitness-no-load"] == (
        ("equal_load", 0.0),
        ("load", 0.0),
        ("min_clients", 0.0),
        ("upper_slack", math.inf),
    )
    for options in variants.values():
        assert list(options) == sorted(options)


def test_only_variants_remove_every_other_present_ingredient() -> None:
    s = make_strategy("fitness")
    assert isinstance(s, FitnessStrategy)
    present = present_ingredients(s)
    variants = ablation_variants(s)
    terms = [x for x in present if x in SCORE_INGREDIENTS]
    policies = tuple(x for x in present if x not in SCORE_INGREDIENTS)
    assert terms
    assert policies
    for name in present:
        if name in terms:
            options = dict(variants[f"fitness-only-{name}"])
            expected: dict[str, float] = {}
            for other in terms:
                if other != name:
                    expected.update(INGREDIENTS[other])
            assert options == expected
            # The kept term and the policies stay; the other terms are gone.
            built = fitness_strategy(options)
            assert isinstance(built, FitnessStrategy)
            assert present_ingredients(built) == (name, *policies)
        else:
            assert f"fitness-only-{name}" not in variants
        no = fitness_strategy(dict(variants[f"fitness-no-{name}"]))
        assert isinstance(no, FitnessStrategy)
        assert name not in present_ingredients(no)
        assert set(present_ingredients(no)) == set(present) - {name}


def test_every_option_is_accepted() -> None:
    variants = ablation_variants()
    assert variants
    for options in variants.values():
        assert parse_fitness_options(format_options(options)) == options
        assert isinstance(fitness_strategy(dict(options)), FitnessStrategy)
    with pytest.raises(TypeError):
        ablation_variants(make_strategy("random"))


def test_plan_runs_variants_as_fitness_under_their_name() -> None:
    plan = ExperimentPlan(
        regimes=("label-skew",),
        strategies=("fitness", "oort"),
        seeds=(0, 1),
        rounds=3,
        base=ScenarioConfig(),
        fitness_options=(("equal_load", 1.0), ("quality", 0.2)),
        variants={"fitness-no-load": (("equal_load", 0.0), ("load", 0.0))},
    )
    jobs = plan.run_jobs()
    assert [(j.strategy, j.label) for j in jobs] == [
        ("fitness", ""),
        ("fitness", ""),
        ("oort", ""),
        ("oort", ""),
        ("fitness", "fitness-no-load"),
        ("fitness", "fitness-no-load"),
    ]
    assert jobs[-1].fitness_options == (("equal_load", 0.0), ("load", 0.0), ("quality", 0.2))
    assert plan.labels == ("fitness", "oort", "fitness-no-load")
    with pytest.raises(ValueError, match="clash"):
        ExperimentPlan(("fleet",), ("fitness",), (0,), 3, ScenarioConfig(), variants={"oort": ()})
    with pytest.raises(ValueError, match="speed"):
        ExperimentPlan(
            ("fleet",), ("fitness",), (0,), 3, ScenarioConfig(), variants={"x": (("speed", 1),)}
        )


def _reaching(strategy: str, per_seed: Sequence[int | None], rounds: int = 10) -> list[RunResult]:
    """Runs whose accuracy jumps to 1 at the given round (never when None)."""
    out = []
    for seed, at in enumerate(per_seed):
        records = tuple(
            RoundRecord(
                round=r,
                accuracy=1.0 if at is not None and r >= at else 0.0,
                load_cv=0.25,
                late_updates=2,
                updates_applied=3,
                bytes_down=10,
                bytes_up=5,
                round_time_s=1.0,
            )
            for r in range(1, rounds + 1)
        )
        out.append(RunResult("fleet", strategy, seed, records, whole_model_bytes=100))
    return out


def _summary() -> dict[str, object]:
    plan = ExperimentPlan(
        regimes=("fleet",),
        strategies=("fitness", "oort"),
        seeds=(0, 1, 2),
        rounds=10,
        base=ScenarioConfig(),
        variants={
            "fitness-no-load": (("load", 0.0), ("upper_slack", math.inf)),
            "fitness-only-load": (("affinity", 0.0),),
        },
    )
    runs = (
        _reaching("fitness", [4, 5, 6])  # rounds 5, 6, 7
        + _reaching("oort", [6, 7, 8])  # 7, 8, 9
        + _reaching("fitness-no-load", [1, 1, 1])  # faster than anyone: still not the peer
        + _reaching("fitness-only-load", [None, None, 6])  # censored median
    )
    reference = {"fleet": {"centralized_accuracy": 1.0, "target_accuracy": 0.5}}
    return summarize(plan, reference, runs)


def test_summarize_variants_like_strategies_but_never_as_peer() -> None:
    out = _summary()
    fig = out["regimes"]["fleet"]  # type: ignore[index]
    assert list(fig["strategies"]) == ["fitness", "oort", "fitness-no-load", "fitness-only-load"]
    assert fig["best_peer"] == "oort"
    no_load = fig["strategies"]["fitness-no-load"]
    assert no_load["wins_vs_fitness"] == {"faster": 3, "tied": 0, "slower": 0}
    assert fig["strategies"]["fitness-only-load"]["rounds_to_target_median"] is None
    assert out["variants"] == {
        "fitness-no-load": "load=0,upper_slack=inf",
        "fitness-only-load": "affinity=0",
    }
    assert out["strategies"] == ["fitness", "oort"]


def test_ablation_table() -> None:
    text = ablation_table(_summary())
    lines = text.splitlines()
    assert "## fleet (R = 10, target accuracy 0.500)" in lines
    table = lines[: lines.index("## Variants")]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table if line.startswith("| ")}
    assert rows["fitness"] == "| fitness | 6 | 0 | — | 0.250 | 2.00 |"
    assert rows["fitness-no-load"].startswith("| fitness-no-load | 3 | 0 | 3/0/0 |")
    assert rows["fitness-only-load"].startswith("| fitness-only-load | >10 | 2 | 0/1/2 |")
    assert rows["oort (best peer)"].startswith("| oort (best peer) | 8 | 0 | 0/0/3 |")
    # Row order: fitness, the variants, the best peer; then the variants' options.
    assert list(rows) == [
        "strategy",
        "fitness",
        "fitness-no-load",
        "fitness-only-load",
        "oort (best peer)",
    ]
    assert "| fitness-no-load | `load=0,upper_slack=inf` |" in lines
