from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedmoe.cli import main
from fedmoe.errors import SettingsError
from fedmoe.settings import add_arguments, env_names, from_args, load_settings, setting


@dataclass(frozen=True)
class _Demo:
    bootstrap: str = setting("FEDMOE_X_BOOTSTRAP", "127.0.0.1:9092", "Kafka bootstrap")
    partitions: int = setting("FEDMOE_X_PARTITIONS", 4, "partitions")
    ratio: float = setting("FEDMOE_X_RATIO", 0.5, "a ratio")
    verbose: bool = setting("FEDMOE_X_VERBOSE", False, "chatty")
    state_dir: Path = setting("FEDMOE_X_STATE_DIR", Path("state"), "where state lives")


def test_env_then_overrides() -> None:
    env = {"FEDMOE_X_PARTITIONS": "8", "FEDMOE_X_VERBOSE": "yes", "FEDMOE_X_STATE_DIR": "/tmp/s"}
    s = load_settings(_Demo, env, ratio="0.25")
    assert s == _Demo(partitions=8, ratio=0.25, verbose=True, state_dir=Path("/tmp/s"))


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="FEDMOE_X_PARTITIONS"):
        load_settings(_Demo, {"FEDMOE_X_PARTITIONS": "many"})


def test_flags_override_env() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, _Demo)
    args = parser.parse_args(["--partitions", "2", "--verbose"])
    s = from_args(_Demo, args, {"FEDMOE_X_PARTITIONS": "8"})
    assert (s.partitions, s.verbose, s.bootstrap) == (2, True, "127.0.0.1:9092")
    assert env_names(_Demo) == {
        "FEDMOE_X_BOOTSTRAP",
        "FEDMOE_X_PARTITIONS",
        "FEDMOE_X_RATIO",
        "FEDMOE_X_VERBOSE",
        "FEDMOE_X_STATE_DIR",
    }


def test_cli_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nope"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_to_env_round_trips_through_load_settings() -> None:
    from fedmoe.scenario import ScenarioSettings
    from fedmoe.settings import load_settings, to_env

    original = ScenarioSettings(devices=7, seed=3, regime="label-skew", time_scale=0.5)
    env = to_env(original)
    assert env["FEDMOE_SCENARIO_DEVICES"] == "7"
    assert load_settings(ScenarioSettings, env) == original
