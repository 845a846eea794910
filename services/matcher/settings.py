"""`MatcherSettings` (`FEDMOE_MATCHER_*`); scenario, broker and runtime knobs have their own."""

from __future__ import annotations

from dataclasses import dataclass

from fedmoe.errors import SettingsError
from fedmoe.settings import setting
from moe.matching import STRATEGY_NAMES


@dataclass(frozen=True)
class MatcherSettings:
    """The round clock: which strategy matches, how long rounds may run, when the next opens."""

    strategy: str = setting(
        "FEDMOE_MATCHER_STRATEGY",
        "fitness",
        f"matching strategy, one of: {', '.join(STRATEGY_NAMES)}",
    )
    max_rounds: int = setting(
        "FEDMOE_MATCHER_MAX_ROUNDS",
        0,
        "training rounds to run (1..max_rounds after the genesis round 0); 0 = unlimited",
    )
    grace_s: float = setting(
        "FEDMOE_MATCHER_GRACE_S",
        2.0,
        "the aggregators' grace after a deadline; a round still open at deadline + 2 x this "
        "is closed anyway (set it to the aggregators' FEDMOE_AGGREGATOR_GRACE_S)",
    )
    open_delay_s: float = setting(
        "FEDMOE_MATCHER_OPEN_DELAY_S",
        0.5,
        "after a round closed: how long the devices' reports for the next round must have been "
        "quiet before it opens (it opens at once when every device of the scenario reported)",
    )
    max_wait_s: float = setting(
        "FEDMOE_MATCHER_MAX_WAIT_S",
        30.0,
        "after a round closed: the next opens at the latest this long after, candidates or not",
    )
    wait_for_load: bool = setting(
        "FEDMOE_MATCHER_WAIT_FOR_LOAD",
        True,
        "hold the next round until the load monitor's ExpertLoad of the closed round arrived "
        "(bounded by max_wait_s)",
    )
    settle_quorum: float = setting(
        "FEDMOE_MATCHER_SETTLE_QUORUM",
        0.5,
        "the 'settled' rule opens the next round only once this share of the devices that "
        "reported for one of the last three rounds reported for it (0 = off)",
    )
    open_on_recent: bool = setting(
        "FEDMOE_MATCHER_OPEN_ON_RECENT",
        False,
        "from round 2, open the next round as soon as every device that reported for one of "
        "the last three rounds reported for it, without the quiet period: about half the bus "
        "overhead per round at 100 devices, but a device reporting for the first time in a "
        "while may miss the round by milliseconds, so a replay (fedmoe replay --follow-rounds) "
        "no longer assigns as recorded",
    )
    group_id: str = setting(
        "FEDMOE_MATCHER_GROUP_ID", "matcher", "Kafka consumer group (run one matcher only)"
    )
    replay_timeout_s: float = setting(
        "FEDMOE_MATCHER_REPLAY_TIMEOUT_S",
        60.0,
        "bound on reading rounds, profiles and expert-load from the beginning at start",
    )

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGY_NAMES:
            raise SettingsError(
                f"FEDMOE_MATCHER_STRATEGY: {self.strategy!r} is not one of {STRATEGY_NAMES}"
            )
        if self.max_rounds < 0:
            raise SettingsError("FEDMOE_MATCHER_MAX_ROUNDS must be >= 0")
        if self.grace_s < 0 or self.open_delay_s < 0:
            raise SettingsError("FEDMOE_MATCHER_GRACE_S and _OPEN_DELAY_S must be >= 0")
        if self.max_wait_s < self.open_delay_s:
            raise SettingsError("FEDMOE_MATCHER_MAX_WAIT_S must be >= FEDMOE_MATCHER_OPEN_DELAY_S")
        if not 0.0 <= self.settle_quorum <= 1.0:
            raise SettingsError("FEDMOE_MATCHER_SETTLE_QUORUM must be in [0, 1]")
        if not self.group_id:
            raise SettingsError("FEDMOE_MATCHER_GROUP_ID must not be empty")
        if not self.replay_timeout_s > 0:
            raise SettingsError("FEDMOE_MATCHER_REPLAY_TIMEOUT_S must be > 0")
