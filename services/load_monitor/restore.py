"""Where the load monitor starts from: its checkpoint, when the broker's history agrees (pure).

The checkpoint is written after the batch's ExpertLoad outputs were acknowledged, and it records
the last one it published (round and timestamp). That ExpertLoad, or a later one, is therefore
on the `expert-load` topic of the same deployment. When the topic holds none as recent, the
checkpoint belongs to an earlier life of the brokers (a local Tansu keeps nothing across a
restart, and `fedmoe demo` may reuse a checkpoint directory): the monitor then starts empty,
as the consumer group (whose offsets went with the brokers) reads its inputs from the start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.messages import ExpertLoad
from services.checkpoint import CheckpointError
from services.load_monitor.state import LoadMonitor

Published = tuple[int, float]
"""The last ExpertLoad published: (round, timestamp)."""


@dataclass(frozen=True, slots=True)
class Start:
    """The state to start with, the last ExpertLoad it published, and why (for the log)."""

    monitor: LoadMonitor
    published: Published | None
    why: str


def checkpoint_data(
    monitor: LoadMonitor, namespace: str, published: Published | None
) -> dict[str, Any]:
    """What the checkpoint file holds: the state and the last ExpertLoad published."""
    return {
        "namespace": namespace,
        "published": None if published is None else list(published),
        "state": monitor.to_dict(),
    }


def choose_start(
    checkpoint: Mapping[str, Any] | None,
    changelog: Sequence[ExpertLoad],
    *,
    num_experts: int,
    alpha: float,
    close_wait_s: float,
) -> Start:
    """The state to start with (see the module docs).

    Raises:
        CheckpointError: the checkpoint is this deployment's but cannot be read back (for
            another number of experts, or malformed): fix the settings or remove the file.
    """

    def fresh(why: str) -> Start:
        return Start(LoadMonitor(num_experts, alpha=alpha, close_wait_s=close_wait_s), None, why)

    if checkpoint is None:
        return fresh("no checkpoint: starting empty")
    try:
        raw = checkpoint["published"]
        published = None if raw is None else (int(raw[0]), float(raw[1]))
        monitor = LoadMonitor.from_dict(checkpoint["state"], alpha=alpha, close_wait_s=close_wait_s)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(f"load-monitor checkpoint cannot be restored: {exc}") from exc
    if published is not None and not any(m.timestamp >= published[1] for m in changelog):
        return fresh(
            f"the checkpoint's last ExpertLoad (round {published[0]}) is not on the "
            "expert-load topic: an earlier life of the brokers; starting empty"
        )
    if monitor.num_experts != num_experts:
        raise CheckpointError(
            f"load-monitor checkpoint has {monitor.num_experts} experts, the scenario "
            f"{num_experts}: fix FEDMOE_SCENARIO_EXPERTS or remove the checkpoint"
        )
    state = "open" if monitor.open else "closed"
    return Start(monitor, published, f"checkpoint: round {monitor.round} ({state})")
