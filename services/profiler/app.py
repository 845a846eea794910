"""The profiler process: `ProfilerHandler` wired to the runtime, the changelog restore, and `main`.

    telemetry (Telemetry, DeviceStatus) ─┐
    assignments (Assignment)            ─┼─► ProfilerHandler ─► profiles (ProfileSnapshot)
    acks (UpdateAck)                    ─┘     state.step        key = device id

On start the process reads `profiles` from the beginning to its end (`brokers.rebuild`) and takes
every device's latest snapshot as its state, then consumes its inputs from the group's committed
offsets. The runtime commits an input only after the snapshot it caused was acknowledged, so a
committed input always has its effect in the changelog, and one handled but not committed is
recognised by the offsets the snapshot records (`state.step`: redelivered).

Instances share the devices through the group, so a partition this instance gains may have
been advanced by another one since the start: the handler hears the assignment
(`PartitionListener`) and, before it handles the first record of a gained partition, reads the
changelog again and adopts each device's state where it is newer than its own
(`DeviceState.newer_than`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence

from brokers.rebuild import replay_topics
from brokers.settings import BrokerSettings
from fedmoe.errors import FedMoEError
from schemas.messages import Assignment, DeviceStatus, ProfileSnapshot, Telemetry, UpdateAck
from schemas.topics import Topic, TopicTable
from services.entrypoint import service_main
from services.errors import InvalidPayload, RetryLater
from services.handler import InboundRecord, Outbound
from services.metrics import ServiceMetrics
from services.profiler.settings import ProfilerSettings
from services.profiler.state import DeviceState, FoldParams, Note, from_snapshot, step, to_snapshot
from services.runtime import RuntimeSettings, ServiceRuntime, run_until_stopped

log = logging.getLogger(__name__)

NAME = "profiler"
INPUTS = (Topic.TELEMETRY, Topic.ASSIGNMENTS, Topic.ACKS)
_TOPIC_OF: dict[type, Topic] = {
    Telemetry: Topic.TELEMETRY,
    DeviceStatus: Topic.TELEMETRY,
    Assignment: Topic.ASSIGNMENTS,
    UpdateAck: Topic.ACKS,
}

ChangelogReader = Callable[[], Awaitable[Sequence[ProfileSnapshot]]]
"""Reads every ProfileSnapshot of the changelog, in per-partition order."""


class ProfilerHandler:
    """Folds each device's records into its `DeviceState`; one snapshot per change.

    Args:
        table: resolves the input topics' concrete names.
        params: the folds' knobs.
        read_changelog: reads the `profiles` changelog (for partitions met anew).
        clock: wall clock for the snapshots' timestamps.
    """

    def __init__(
        self,
        table: TopicTable,
        params: FoldParams,
        *,
        read_changelog: ChangelogReader,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.devices: dict[str, DeviceState] = {}
        self.notes: Counter[str] = Counter()
        self._params = params
        self._read_changelog = read_changelog
        self._clock = clock
        self._logical = {table.name(t): t for t in INPUTS}
        self._unread: set[tuple[str, int]] = set()  # gained since the changelog was last read

    def restore(self, snapshots: Iterable[ProfileSnapshot]) -> int:
        """Adopt each device's latest snapshot where it is newer than the state held.

        Returns:
            How many devices' states were adopted.
        """
        latest: dict[str, ProfileSnapshot] = {}
        for snapshot in snapshots:  # per-partition order: a device's later snapshot wins
            latest[snapshot.device_id] = snapshot
        adopted = 0
        for device, snapshot in latest.items():
            theirs = from_snapshot(snapshot)
            mine = self.devices.get(device)
            if mine is None or theirs.newer_than(mine):
                self.devices[device] = theirs
                adopted += 1
        return adopted

    async def on_partitions_assigned(self, partitions: frozenset[tuple[str, int]]) -> None:
        """Gained partitions: read the changelog before handling their first record."""
        self._unread |= partitions

    async def on_partitions_revoked(self, partitions: frozenset[tuple[str, int]]) -> None:
        """Lost partitions: their devices' states stay, superseded when they come back."""
        self._unread -= partitions

    async def handle(self, record: InboundRecord) -> list[Outbound]:
        """Fold one record; the device's new snapshot when something changed."""
        message = record.message
        topic = self._logical.get(record.topic)
        if not isinstance(message, Telemetry | DeviceStatus | Assignment | UpdateAck) or (
            _TOPIC_OF[type(message)] is not topic
        ):
            raise InvalidPayload("unexpected_message", f"{type(message).__name__} on {topic}")
        device = message.device_id
        if record.key != device.encode():
            raise InvalidPayload("key_mismatch", f"key {record.key!r} for device {device!r}")
        if (record.topic, record.partition) in self._unread:
            await self._refresh()
        source = f"{topic}/{record.partition}"
        now = record.timestamp_ms / 1000.0 if record.timestamp_ms > 0 else message.timestamp
        try:
            result = step(
                self.devices.get(device),
                message,
                source=source,
                offset=record.offset,
                now=now,
                params=self._params,
            )
        except ValueError as exc:
            raise InvalidPayload("invalid_report", str(exc)) from exc
        self.notes[result.note] += 1
        if result.outcome_folded:
            self.notes[Note.OUTCOME] += 1
        if result.note is Note.UNKNOWN_DEVICE:
            log.info("%s: %s of %s, which has no profile yet: dropped", NAME, message.TYPE, device)
        if result.state is None or not result.changed:
            return []
        self.devices[device] = result.state
        snapshot = to_snapshot(
            result.state,
            message_id=f"profile:{device}:{source}:{record.offset}",
            timestamp=self._clock(),
        )
        return [Outbound(Topic.PROFILES, device, snapshot)]

    async def _refresh(self) -> None:
        # The previous owners of what was gained so far committed before it was assigned here:
        # one read now covers all of it.
        covered = set(self._unread)
        try:
            snapshots = await self._read_changelog()
        except FedMoEError as exc:
            raise RetryLater(f"cannot read the profiles changelog: {exc}") from exc
        adopted = self.restore(snapshots)
        self._unread -= covered
        self.notes["changelog_reads"] += 1
        log.info(
            "%s: changelog read for %d gained partitions: %d snapshots, %d devices adopted",
            NAME,
            len(covered),
            len(snapshots),
            adopted,
        )


async def read_changelog(broker: BrokerSettings, timeout_s: float) -> list[ProfileSnapshot]:
    """Each device's latest ProfileSnapshot on `profiles` (the topic is keyed by device)."""
    replay = await replay_topics(
        broker,
        [Topic.PROFILES],
        timeout_s=timeout_s,
        client_id=f"{NAME}-replay",
        latest_per_key=[Topic.PROFILES],
    )
    return [r.message for r in replay.records if isinstance(r.message, ProfileSnapshot)]


async def run_profiler(
    settings: ProfilerSettings, broker: BrokerSettings, runtime: RuntimeSettings
) -> None:
    """Restore from the changelog, then fold inputs until SIGTERM / SIGINT."""

    async def reader() -> list[ProfileSnapshot]:
        return await read_changelog(broker, settings.replay_timeout_s)

    handler = ProfilerHandler(broker.topic_table(), settings.fold_params(), read_changelog=reader)
    started = time.monotonic()
    snapshots = await reader()
    handler.restore(snapshots)
    log.info(
        "%s: restored %d devices from %d snapshots in %.2fs",
        NAME,
        len(handler.devices),
        len(snapshots),
        time.monotonic() - started,
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
    "Profiler: folds device telemetry, status and round outcomes (assignments, acks) into one "
    "ClientProfile per device, published to the compacted profiles topic after every change."
)


def main(argv: Sequence[str]) -> int:
    """Entry point of `fedmoe service profiler`."""
    return service_main(
        argv,
        name=NAME,
        description=DESCRIPTION,
        settings=(ProfilerSettings, BrokerSettings, RuntimeSettings),
        run=run_profiler,
    )
