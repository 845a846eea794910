"""`--model small|large` (`FEDMOE_*_MODEL`): how every settings layer resolves it."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from fedmoe.commands.demo import build_parser as demo_parser
from fedmoe.commands.experiment import ExperimentSettings
from fedmoe.commands.fleet import build_parser as fleet_parser
from fedmoe.commands.robustness import RobustnessSettings
from fedmoe.errors import SettingsError
from fedmoe.scenario import ScenarioSettings
from fedmoe.settings import from_args, load_settings, to_env
from moe.fleet import DEFAULT_DEADLINE_S
from moe.presets import LARGE, model_preset

LARGE_DEADLINE_S = model_preset(LARGE).deadline_s


def test_small_is_the_default_and_unchanged() -> None:
    config = ScenarioSettings().config()
    assert (config.model, config.num_experts, config.deadline_s) == ("small", 8, DEFAULT_DEADLINE_S)
    assert ScenarioSettings(time_scale=0.5).round_deadline_wall_s == DEFAULT_DEADLINE_S * 0.5


def test_large_alone_gives_the_presets_experts_and_deadline() -> None:
    settings = load_settings(ScenarioSettings, {"FEDMOE_SCENARIO_MODEL": "large"})
    config = settings.config()
    assert (config.model, config.num_experts, config.deadline_s) == ("large", 64, LARGE_DEADLINE_S)
    assert settings.round_deadline_wall_s == LARGE_DEADLINE_S


def test_explicit_experts_and_deadline_win_over_the_preset() -> None:
    env = {"FEDMOE_SCENARIO_MODEL": "large", "FEDMOE_SCENARIO_EXPERTS": "16"}
    config = load_settings(ScenarioSettings, env, deadline_s="20").config()
    assert (config.num_experts, config.deadline_s) == (16, 20.0)
    assert ScenarioSettings(experts=3).config().num_experts == 3  # small too


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"FEDMOE_SCENARIO_MODEL": "huge"}, r"unknown model 'huge'.*'small', 'large'"),
        ({"FEDMOE_SCENARIO_EXPERTS": "-1"}, "experts must be >= 0"),
        ({"FEDMOE_SCENARIO_DEADLINE_S": "-2"}, "deadline must be >= 0"),
    ],
)
def test_bad_model_settings_are_clear_errors(env: dict[str, str], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        load_settings(ScenarioSettings, env)


def test_the_model_travels_to_child_processes() -> None:
    """`fedmoe demo` and the sharded fleet hand the scenario to children with `to_env`: the
    choice travels as given (0 stays 0, resolved by each child the same way)."""
    original = ScenarioSettings(model="large", devices=5)
    env = to_env(original)
    assert (env["FEDMOE_SCENARIO_MODEL"], env["FEDMOE_SCENARIO_EXPERTS"]) == ("large", "0")
    child = load_settings(ScenarioSettings, env)
    assert child == original
    assert child.config() == original.config()


@pytest.mark.parametrize("parser", [demo_parser, fleet_parser])
def test_demo_and_fleet_take_the_model_flag(parser: Callable[[], argparse.ArgumentParser]) -> None:
    args = parser().parse_args(["--model", "large"])
    assert from_args(ScenarioSettings, args, {}).config().num_experts == 64


def test_experiment_and_robustness_follow_the_model() -> None:
    base = ExperimentSettings(model="large", regimes="fleet").plan().base
    assert (base.model, base.num_experts, base.deadline_s) == ("large", 64, LARGE_DEADLINE_S)
    small = ExperimentSettings(regimes="fleet").plan().base
    assert (small.model, small.num_experts, small.deadline_s) == ("small", 8, DEFAULT_DEADLINE_S)
    explicit = ExperimentSettings(model="large", experts=4, deadline_s=9.0).plan().base
    assert (explicit.num_experts, explicit.deadline_s) == (4, 9.0)
    robust = RobustnessSettings(model="large").plan().base
    assert (robust.model, robust.num_experts, robust.deadline_s) == ("large", 64, LARGE_DEADLINE_S)
    assert RobustnessSettings().plan().base.num_experts == 8
    with pytest.raises(SettingsError, match="unknown model"):
        ExperimentSettings(model="huge")
