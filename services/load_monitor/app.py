"""The load-monitor process: `LoadMonitorHandler` on the runtime, the checkpoint, and `main`.

    model (PartVersion)                           ─┬─► LoadMonitorHandler ─► expert-load
    rounds (RoundOpened, PartClosed, RoundClosed) ─┘     state.LoadMonitor     (ExpertLoad, "load")

One instance per deployment (its input `rounds` has one partition). The round's assignment per
expert comes from RoundOpened.expected_parts, not from the `assignments` topic (`state` says
why). The whole state is checkpointed after each batch's outputs were acknowledged and before
its offsets are committed; on start the checkpoint is checked against the `expert-load` topic
(`restore.choose_start`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

from brokers.rebuild import replay_topics
from brokers.settings import BrokerSettings
from fedmoe.scenario import ScenarioSettings
from moe.wire import expert_load_message
from schemas.messages import (
    ExpertLoad,
    PartClosed,
    PartVersion,
    RoundClosed,
    RoundOpened,
)
from schemas.topics import Topic, TopicTable
from services.checkpoint import CheckpointStore
from services.entrypoint import service_main
from services.errors import InvalidPayload
from services.handler import InboundRecord, Outbound
from services.load_monitor.restore import Published, checkpoint_data, choose_start
from services.load_monitor.settings import LoadMonitorSettings
from services.load_monitor.state import ClosedRound, LoadMonitor, Note
from services.metrics import ServiceMetrics
from services.runtime import RuntimeSettings, ServiceRuntime, run_until_stopped

log = logging.getLogger(__name__)

NAME = "load-monitor"
INPUTS = (Topic.MODEL, Topic.ROUNDS)
_UNCHANGED = frozenset({Note.REPEATED, Note.STALE, Note.NOT_EXPERT})


class LoadMonitorHandler:
    """Feeds each record to the `LoadMonitor`; one ExpertLoad per folded round.

    Args:
        monitor: the state (from `restore.choose_start`).
        table: resolves the input topics' concrete names.
        store: where `checkpoint()` writes (None: no checkpoint, for tests).
        namespace: recorded in the checkpoint.
        published: the last ExpertLoad published before (round, timestamp), from the checkpoint.
        clock: wall clock (waits for part versions, ExpertLoad timestamps).
    """

    def __init__(
        self,
        monitor: LoadMonitor,
        table: TopicTable,
        *,
        store: CheckpointStore | None,
        namespace: str,
        published: Published | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.monitor = monitor
        self.notes: Counter[str] = Counter()
        self.published = published
        self._store = store
        self._namespace = namespace
        self._clock = clock
        self._logical = {table.name(t): t for t in INPUTS}
        self._dirty = False

    async def handle(self, record: InboundRecord) -> list[Outbound]:
        """Fold one record; the ExpertLoad of every round it let close."""
        message, topic, now = record.message, self._logical.get(record.topic), self._clock()
        closed: list[ClosedRound] = []
        try:
            if topic is Topic.MODEL and isinstance(message, PartVersion):
                note, closed = self.monitor.on_part_version(message, now)
            elif topic is Topic.ROUNDS and isinstance(message, RoundOpened):
                note = self.monitor.on_round_opened(message)
            elif topic is Topic.ROUNDS and isinstance(message, RoundClosed):
                note, closed = self.monitor.on_round_closed(message, now)
            elif topic is Topic.ROUNDS and isinstance(message, PartClosed):
                note = self.monitor.on_part_closed(message)
            else:
                raise InvalidPayload(
                    "unexpected_message", f"{type(message).__name__} on {record.topic}"
                )
        except ValueError as exc:
            raise InvalidPayload("invalid_input", str(exc)) from exc
        return self._after(note, closed)

    async def on_tick(self, now: float) -> list[Outbound]:
        """Fold a round that waited too long for its part versions."""
        note, closed = self.monitor.on_tick(now)
        if note is None:
            return []
        log.warning("%s: round %d folded without every part version", NAME, closed[0].round)
        return self._after(note, closed)

    async def checkpoint(self) -> None:
        """Write the state (after the outputs were acknowledged, before the commit)."""
        if self._store is None or not self._dirty:
            return
        self._store.save(checkpoint_data(self.monitor, self._namespace, self.published))
        self._dirty = False

    def _after(self, note: Note, closed: list[ClosedRound]) -> list[Outbound]:
        self.notes[note] += 1
        self._dirty = self._dirty or note not in _UNCHANGED or bool(closed)
        outputs = []
        for c in closed:
            message = expert_load_message(
                c.load,
                message_id=f"load:{c.round}",
                timestamp=self._clock(),
                round=c.round,
                device_id=NAME,
            )
            self.published = (message.round, message.timestamp)
            self.notes["expert_load_published"] += 1
            outputs.append(Outbound(Topic.EXPERT_LOAD, "load", message))
        return outputs


async def run_load_monitor(
    settings: LoadMonitorSettings,
    scenario: ScenarioSettings,
    broker: BrokerSettings,
    runtime: RuntimeSettings,
) -> None:
    """Start from the checkpoint (or empty), then fold inputs until SIGTERM / SIGINT."""
    store = CheckpointStore(settings.checkpoint_path(broker.namespace))
    replay = await replay_topics(
        broker,
        [Topic.EXPERT_LOAD],
        timeout_s=settings.replay_timeout_s,
        client_id=f"{NAME}-replay",
    )
    changelog = [r.message for r in replay.records if isinstance(r.message, ExpertLoad)]
    start = choose_start(
        store.load(),
        changelog,
        num_experts=scenario.config().num_experts,
        alpha=settings.ewma_alpha,
        close_wait_s=settings.close_wait_s,
    )
    log.info(
        "%s: %s (%s; %d ExpertLoads on the topic)", NAME, start.why, store.path, len(changelog)
    )
    handler = LoadMonitorHandler(
        start.monitor,
        broker.topic_table(),
        store=store,
        namespace=broker.namespace,
        published=start.published,
    )
    await run_until_stopped(
        ServiceRuntime(
            broker,
            name=NAME,
            handler=handler,
            inputs=INPUTS,
            group_id=settings.group_id,
            settings=runtime,
            metrics=ServiceMetrics(NAME, handler.notes),
        )
    )


DESCRIPTION = (
    "Load monitor: clients assigned, updates accepted and samples routed per expert, folded "
    "round by round from assignments, part versions and round events; publishes ExpertLoad "
    "after every RoundClosed."
)


def main(argv: Sequence[str]) -> int:
    """Entry point of `fedmoe service load-monitor`."""
    return service_main(
        argv,
        name=NAME,
        description=DESCRIPTION,
        settings=(LoadMonitorSettings, ScenarioSettings, BrokerSettings, RuntimeSettings),
        run=run_load_monitor,
    )
