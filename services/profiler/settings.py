"""`ProfilerSettings` (`FEDMOE_PROFILER_*`); broker and runtime knobs have their own classes."""

from __future__ import annotations

from dataclasses import dataclass

from fedmoe.errors import SettingsError
from fedmoe.settings import setting
from services.profiler.state import FoldParams

_DEFAULTS = FoldParams()


@dataclass(frozen=True)
class ProfilerSettings:
    """One profiler instance: its consumer group, the folds' knobs, how long a replay may take.

    The fold knobs default to the ones the in-process simulation uses (parity): change them for
    every process of a run or for none.
    """

    group_id: str = setting(
        "FEDMOE_PROFILER_GROUP_ID", "profiler", "Kafka consumer group (instances share devices)"
    )
    telemetry_alpha: float = setting(
        "FEDMOE_PROFILER_TELEMETRY_ALPHA",
        _DEFAULTS.telemetry_alpha,
        "EWMA weight of a new compute / bandwidth measurement, in (0, 1]",
    )
    outcome_alpha: float = setting(
        "FEDMOE_PROFILER_OUTCOME_ALPHA",
        _DEFAULTS.outcome_alpha,
        "EWMA weight of a round's completion and expert-quality measurement, in (0, 1]",
    )
    loss_beta: float = setting(
        "FEDMOE_PROFILER_LOSS_BETA",
        _DEFAULTS.loss_beta,
        "loss scale of the expert quality exp(-beta * loss), > 0",
    )
    replay_timeout_s: float = setting(
        "FEDMOE_PROFILER_REPLAY_TIMEOUT_S",
        60.0,
        "bound on reading the profiles changelog (at start and on a partition it meets anew)",
    )

    def __post_init__(self) -> None:
        if not self.group_id:
            raise SettingsError("FEDMOE_PROFILER_GROUP_ID must not be empty")
        for env, value in (
            ("FEDMOE_PROFILER_TELEMETRY_ALPHA", self.telemetry_alpha),
            ("FEDMOE_PROFILER_OUTCOME_ALPHA", self.outcome_alpha),
        ):
            if not 0.0 < value <= 1.0:
                raise SettingsError(f"{env}: {value} is not in (0, 1]")
        if not self.loss_beta > 0:
            raise SettingsError(f"FEDMOE_PROFILER_LOSS_BETA: {self.loss_beta} is not > 0")
        if not self.replay_timeout_s > 0:
            raise SettingsError("FEDMOE_PROFILER_REPLAY_TIMEOUT_S must be > 0")

    def fold_params(self) -> FoldParams:
        """The folds' knobs."""
        return FoldParams(self.telemetry_alpha, self.outcome_alpha, self.loss_beta)
