"""`LoadMonitorSettings` (`FEDMOE_LOAD_MONITOR_*`); scenario, broker and runtime knobs have their
own classes (E comes from `FEDMOE_SCENARIO_EXPERTS`)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

from fedmoe.errors import SettingsError
from fedmoe.settings import setting
from moe.load import on_round_closed

# The EWMA weight the in-process simulation closes rounds with (parity).
_ALPHA: float = inspect.signature(on_round_closed).parameters["alpha"].default


@dataclass(frozen=True)
class LoadMonitorSettings:
    """The load monitor (one instance per deployment): group, checkpoint, round folding."""

    group_id: str = setting(
        "FEDMOE_LOAD_MONITOR_GROUP_ID", "load-monitor", "Kafka consumer group (one instance)"
    )
    checkpoint_dir: Path = setting(
        "FEDMOE_LOAD_MONITOR_CHECKPOINT_DIR",
        Path(".fedmoe/checkpoints/load-monitor"),
        "directory of the load monitor's checkpoint (the file goes under <dir>/<namespace>/)",
    )
    ewma_alpha: float = setting(
        "FEDMOE_LOAD_MONITOR_EWMA_ALPHA",
        _ALPHA,
        "EWMA weight of a closing round's clients per expert, in (0, 1]",
    )
    close_wait_s: float = setting(
        "FEDMOE_LOAD_MONITOR_CLOSE_WAIT_S",
        30.0,
        "how long a RoundClosed waits for the part versions it names before it is folded",
    )
    replay_timeout_s: float = setting(
        "FEDMOE_LOAD_MONITOR_REPLAY_TIMEOUT_S",
        30.0,
        "bound on reading the expert-load topic at start (checks the checkpoint against it)",
    )

    def __post_init__(self) -> None:
        if not self.group_id:
            raise SettingsError("FEDMOE_LOAD_MONITOR_GROUP_ID must not be empty")
        if not 0.0 < self.ewma_alpha <= 1.0:
            raise SettingsError(f"FEDMOE_LOAD_MONITOR_EWMA_ALPHA: {self.ewma_alpha} not in (0, 1]")
        for env, value in (
            ("FEDMOE_LOAD_MONITOR_CLOSE_WAIT_S", self.close_wait_s),
            ("FEDMOE_LOAD_MONITOR_REPLAY_TIMEOUT_S", self.replay_timeout_s),
        ):
            if not value > 0:
                raise SettingsError(f"{env}: {value} is not > 0")

    def checkpoint_path(self, namespace: str) -> Path:
        """The checkpoint file of one deployment namespace."""
        return Path(self.checkpoint_dir) / namespace / "load-monitor.ckpt"
