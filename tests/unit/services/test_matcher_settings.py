"""MatcherSettings from env and flags; bad values refused with the env name."""

from __future__ import annotations

import pytest

from fedmoe.errors import SettingsError
from fedmoe.settings import load_settings
from services.matcher.settings import MatcherSettings


def test_env_is_read() -> None:
    s = load_settings(
        MatcherSettings,
        {"FEDMOE_MATCHER_STRATEGY": "random", "FEDMOE_MATCHER_MAX_ROUNDS": "7",
         "FEDMOE_MATCHER_WAIT_FOR_LOAD": "false", "FEDMOE_MATCHER_OPEN_DELAY_S": "0.2"},
    )  # fmt: skip
    assert (s.strategy, s.max_rounds, s.wait_for_load, s.open_delay_s) == ("random", 7, False, 0.2)


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("FEDMOE_MATCHER_STRATEGY", "best"),
        ("FEDMOE_MATCHER_MAX_ROUNDS", "-1"),
        ("FEDMOE_MATCHER_GRACE_S", "-1"),
        ("FEDMOE_MATCHER_MAX_WAIT_S", "0.1"),  # below the open delay
        ("FEDMOE_MATCHER_GROUP_ID", ""),
    ],
)
def test_bad_values_are_refused(env: str, value: str) -> None:
    with pytest.raises(SettingsError, match=env):
        load_settings(MatcherSettings, {env: value})
