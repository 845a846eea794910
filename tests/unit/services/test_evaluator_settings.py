"""EvaluatorSettings from env; bad values refused with the env name."""

from __future__ import annotations

import pytest

from fedmoe.errors import SettingsError
from fedmoe.settings import load_settings
from services.evaluator.settings import EvaluatorSettings


def test_env_is_read() -> None:
    s = load_settings(EvaluatorSettings, {"FEDMOE_EVALUATOR_HISTORY": "9"})
    assert (s.history, s.group_id) == (9, "evaluator")


@pytest.mark.parametrize(
    ("env", "value"),
    [("FEDMOE_EVALUATOR_HISTORY", "0"), ("FEDMOE_EVALUATOR_REPLAY_TIMEOUT_S", "0")],
)
def test_bad_values_are_refused(env: str, value: str) -> None:
    with pytest.raises(SettingsError, match=env):
        load_settings(EvaluatorSettings, {env: value})
