"""`ResumedService`: rebuild a handler's state by replaying topics, then run it in the runtime.

    async with ResumedService(broker, name="matcher", handler=h, replay=[...], inputs=[...],
                              group_id="matcher") as service:
        with stop_on_signals(service.stop):
            await service.wait()

On enter it reads `replay` from the beginning to the end offsets of that moment
(`brokers.rebuild.replay_topics`, bounded by `replay_timeout_s`; the topics in `latest_per_key`
reduced to each key's last record), hands the records to
`handler.restore(records)` (the handler folds them and produces nothing), then enters a
`ServiceRuntime` over `inputs` in `group_id`, whose first tick and first record therefore meet
the rebuilt state. The group resumes from its committed offsets, so records up to the replay's
end may come again: the handler skips them (`services.watermarks.Watermarks`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

from brokers.rebuild import ReplayedRecord, replay_topics
from brokers.settings import BrokerSettings
from schemas.topics import Topic
from services.handler import InboundRecord, Outbound
from services.metrics import ServiceMetrics
from services.runtime import RuntimeSettings, ServiceRuntime

log = logging.getLogger(__name__)


class Restorable(Protocol):
    """A handler whose state is a fold of topics it can be handed at start."""

    def restore(self, records: Sequence[ReplayedRecord]) -> int:
        """Fold replayed records (no outputs); returns how many were folded."""
        ...

    async def handle(self, record: InboundRecord) -> Sequence[Outbound]:
        """The runtime's `Handler.handle`."""
        ...


H = TypeVar("H", bound=Restorable)


class ResumedService(Generic[H]):
    """Replay, restore, then the runtime (see the module docstring)."""

    def __init__(
        self,
        broker: BrokerSettings,
        *,
        name: str,
        handler: H,
        replay: Sequence[Topic | str],
        inputs: Sequence[Topic | str],
        latest_per_key: Sequence[Topic | str] = (),
        group_id: str,
        settings: RuntimeSettings | None = None,
        replay_timeout_s: float = 60.0,
        metrics: ServiceMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._broker = broker
        self.name = name
        self.handler = handler
        self._replay = list(replay)
        self._latest_per_key = list(latest_per_key)
        self._inputs = list(inputs)
        self._group_id = group_id
        self._settings = settings if settings is not None else RuntimeSettings()
        self._replay_timeout_s = replay_timeout_s
        self.metrics = metrics if metrics is not None else ServiceMetrics(name)
        self._clock = clock
        self._runtime: ServiceRuntime | None = None
        self._stack: AsyncExitStack | None = None

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("ResumedService is not reentrant")
        started = time.monotonic()
        replay = await replay_topics(
            self._broker,
            self._replay,
            timeout_s=self._replay_timeout_s,
            client_id=f"{self.name}-replay",
            latest_per_key=self._latest_per_key,
        )
        folded = self.handler.restore(replay.records)
        log.info(
            "%s: replayed %d records (%d folded, %d undecodable) in %.2fs",
            self.name,
            len(replay.records),
            folded,
            replay.skipped,
            time.monotonic() - started,
        )
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._runtime = await stack.enter_async_context(
                ServiceRuntime(
                    self._broker,
                    name=self.name,
                    handler=self.handler,
                    inputs=self._inputs,
                    group_id=self._group_id,
                    settings=self._settings,
                    metrics=self.metrics,
                    clock=self._clock,
                )
            )
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._stack = stack
        return self

    def stop(self) -> None:
        """Finish what is in hand and stop (safe to call more than once)."""
        if self._runtime is not None:
            self._runtime.stop()

    async def wait(self) -> None:
        """Return when the runtime has stopped."""
        if self._runtime is not None:
            await self._runtime.wait()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)
