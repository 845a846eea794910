"""`RunObserver`: a read-only consumer of the run's outcome topics, folded into `RunProgress`.

It runs in the one service runtime (its own consumer group, from the earliest offset) with a
handler that produces nothing, so the demo watches the bus exactly as any service reads it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from brokers.settings import BrokerSettings
from fedmoe.demo.progress import RunProgress
from schemas.topics import Topic
from services.handler import InboundRecord, Outbound
from services.runtime import RuntimeSettings, ServiceRuntime

OBSERVED = (Topic.ROUNDS, Topic.METRICS, Topic.ACKS, Topic.DEAD_LETTER)


class _Fold:
    """Handler: every record into `progress`; `changed` is set after each one."""

    def __init__(self, progress: RunProgress) -> None:
        self.progress = progress
        self.changed = asyncio.Event()

    async def handle(self, record: InboundRecord) -> Sequence[Outbound]:
        self.progress.fold(record.message)
        self.changed.set()
        return ()


def observer_runtime(broker: BrokerSettings) -> tuple[ServiceRuntime, RunProgress, asyncio.Event]:
    """A runtime that folds the run's outcome topics; (runtime, progress, changed event)."""
    progress = RunProgress()
    fold = _Fold(progress)
    runtime = ServiceRuntime(
        broker,
        name="demo-observer",
        handler=fold,
        inputs=list(OBSERVED),
        group_id=f"demo-observer-{uuid.uuid4().hex[:8]}",
        settings=RuntimeSettings(
            auto_offset_reset="earliest", poll_timeout_s=0.2, metrics_interval_s=3600.0
        ),
    )
    return runtime, progress, fold.changed
