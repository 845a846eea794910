"""`EvaluatorSettings` (`FEDMOE_EVALUATOR_*`); scenario, broker and runtime knobs have their own."""

from __future__ import annotations

from dataclasses import dataclass

from fedmoe.errors import SettingsError
from fedmoe.settings import setting


@dataclass(frozen=True)
class EvaluatorSettings:
    """One evaluator instance (run one: its inputs include the one-partition `rounds`)."""

    group_id: str = setting("FEDMOE_EVALUATOR_GROUP_ID", "evaluator", "Kafka consumer group")
    history: int = setting(
        "FEDMOE_EVALUATOR_HISTORY",
        4,
        "versions kept per part besides those a closed round still waits for",
    )
    replay_timeout_s: float = setting(
        "FEDMOE_EVALUATOR_REPLAY_TIMEOUT_S",
        60.0,
        "bound on reading metrics, rounds and model from the beginning at start",
    )

    def __post_init__(self) -> None:
        if not self.group_id:
            raise SettingsError("FEDMOE_EVALUATOR_GROUP_ID must not be empty")
        if self.history < 1:
            raise SettingsError("FEDMOE_EVALUATOR_HISTORY must be >= 1")
        if not self.replay_timeout_s > 0:
            raise SettingsError("FEDMOE_EVALUATOR_REPLAY_TIMEOUT_S must be > 0")
