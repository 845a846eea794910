"""One simulated device: the round protocol's device side (step 5) over its MQTT link.

    RoundClosed(r)  → (nothing when it is the `last` round) available in r+1 (scenario)?
                                                     no: DeviceStatus(offline, "unavailable")
                                                     yes: wait for `shared` at the round's
                      version (every expert's gate row comes in the RoundClosed itself),
                      Telemetry(round r+1) (its routing histogram; the losses of its last
                      training, when no telemetry reported them yet), after a
                      DeviceStatus(online) only when it was offline
    Assignment(r)   → (once per round, never for a round already closed) subscribe to the
                      assigned experts' parts, wait for them at the assignment's versions,
                      unsubscribe, train_local (seeded as the simulation), wait out the
                      simulated round time (× time_scale) from the round's open time, upload
                      one ModelUpdate, resend it with the same ids every resend_s until every
                      part has a final UpdateAck
    PartVersion     → kept when newer (the model store); waiters are woken
    UpdateAck       → bookkeeping of the pending update

So the downlink is `shared`, the round marker with the gate rows and the assigned experts, not
the whole model.

Incoming messages are handled one at a time and quickly; the waits and the training run in
named tasks of the agent's TaskGroup, cancelled when it stops. Inputs that fail the checks of
`clients.inbound` are counted and dropped. On stop the device publishes a retained offline
status and disconnects cleanly (its session stays at the broker).

Training runs on the event loop: one call is a few ms for this model, shorter than anything
else here worth a thread. Callers wrap the fleet in `moe.training.single_threaded_blas()`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from brokers.errors import BrokerError
from brokers.settings import BrokerSettings
from clients.inbound import ChunkHeld, Drop, Inbound, InboundFilter
from clients.link import DeviceLink
from clients.model_store import ModelStore, Offer, Readiness
from clients.rounds import RoundBook, Take
from clients.settings import FleetSettings
from clients.stats import DeviceStats, Event, Received
from clients.uploads import AckEffect, PendingUpdate, build_update, update_payloads
from clients.world import FleetWorld, status
from moe.parts import SHARED, expert_part_id, part_ids
from moe.scenario import device_id
from moe.tensors import PartTensors
from moe.wire import LossReport, loss_report
from schemas import encode
from schemas.messages import Assignment, PartVersion, RoundClosed, UpdateAck
from schemas.topics import MqttTopic

log = logging.getLogger(__name__)

RoundHook = Callable[[str, int], None]

_NOT_TAKEN = {
    Take.REPEATED: Event.ASSIGNMENT_REPEATED,
    Take.STALE: Event.ASSIGNMENT_STALE,
    Take.EMPTY: Event.ASSIGNMENT_EMPTY,
}

# How long a goodbye status may take on stop (the session is kept either way).
_GOODBYE_S = 2.0


class DeviceAgent:
    """Device `index` of the scenario (see the module docstring)."""

    def __init__(
        self,
        index: int,
        *,
        world: FleetWorld,
        settings: FleetSettings,
        broker: BrokerSettings,
        stats: DeviceStats | None = None,
        on_round_closed: RoundHook | None = None,
        clock: Callable[[], float] = time.time,
        password: str | None = None,
    ) -> None:
        self.index = index
        self.device = device_id(index)
        self.stats = stats if stats is not None else DeviceStats()
        self._world = world
        self._scenario = world.scenario
        self._settings = settings
        self._on_round_closed = on_round_closed
        self._clock = clock
        table = broker.topic_table()
        self._filter = InboundFilter(table, self.device, self._scenario.model)
        self._status_topic = table.mqtt(MqttTopic.STATUS, device=self.device)
        self._telemetry_topic = table.mqtt(MqttTopic.TELEMETRY, device=self.device)
        self._update_topic = table.mqtt(MqttTopic.UPDATE, device=self.device)
        self._experts = [p for p in part_ids(self._scenario.model) if p != SHARED]
        self._store = ModelStore()  # whole parts: `shared` and the experts assigned
        self._listeners: Counter[str] = Counter()  # rounds of work waiting per part
        self._model_changed = asyncio.Condition()
        self._rounds = RoundBook()
        # (round, online, reason) of the latest status: republished on reconnect, in the will.
        self._presence: tuple[int, bool, str] = (0, True, "connected")
        # The last training's mean loss per expert part, until a telemetry reported it: each
        # training's losses are reported once, so the profiler folds every loss it gets into
        # the round the device was assigned last (late or not) and none into a round the
        # device did not train in (as the in-process simulation does).
        self._losses = LossReport()
        self._pending: dict[str, PendingUpdate] = {}
        self._acked: dict[str, asyncio.Event] = {}
        self._updates: set[str] = set()  # update ids of this run (acks of others are strays)
        self._announce: asyncio.Task[None] | None = None
        self._draining = False  # finishing the rounds under way, taking no new work
        self._busy = 0  # rounds being trained or uploaded
        self._idle = asyncio.Event()
        self._idle.set()
        self._work: set[asyncio.Task[None]] = set()
        self._group: asyncio.TaskGroup | None = None
        # Status ids must differ across restarts too (consumers dedup by message id).
        self._incarnation = f"{int(clock() * 1000):x}"
        self._ids = itertools.count()
        self._link = DeviceLink(
            broker,
            client_id=f"{settings.client_prefix}{self.device}",
            subscriptions=self._filter.subscriptions,
            will=self._will,
            session_expiry_s=settings.session_expiry_s,
            keepalive_s=settings.keepalive_s,
            # Its own account (username = device id) when it has a secret; else the broker
            # settings' (an --insecure broker takes anonymous clients).
            username=self.device if password is not None else None,
            password=password,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the device's MQTT link is up."""
        return self._link.connected

    @property
    def pending_updates(self) -> int:
        """Updates sent and still waiting for an ack of some part."""
        return len(self._pending)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set: then say goodbye and disconnect cleanly."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                link = group.create_task(self._run_link(), name=f"{self.device}:mqtt")
                stopped = group.create_task(stop.wait(), name=f"{self.device}:stop-watch")
                await asyncio.wait({link, stopped}, return_when=asyncio.FIRST_COMPLETED)
                for task in list(self._work):
                    task.cancel()
                if not link.done():
                    await self._goodbye()
                    link.cancel()
                stopped.cancel()
        finally:
            self._group = None
            self._filter.close()  # the spools of model versions left incomplete

    async def _run_link(self) -> None:
        try:
            await self._link.run(self._handle, self._on_connect)
        except BrokerError as exc:
            if exc.retriable:
                raise
            # Refused for good (a revoked account, a wrong secret): this device stops, the
            # rest of the fleet goes on.
            log.error("%s: stopped: %s", self.device, exc)
            self.stats.count(Event.REFUSED)

    def drain(self) -> None:
        """Take no new work (announcements, assignments); finish the rounds under way."""
        self._draining = True

    @property
    def idle(self) -> bool:
        """No round is being trained or uploaded."""
        return self._idle.is_set()

    async def wait_idle(self) -> None:
        """Return when no round is being trained or uploaded (every update acked or given up)."""
        await self._idle.wait()

    def drop_connection(self, away_s: float) -> bool:
        """Simulated fault: lose the connection abruptly, come back after `away_s`."""
        if not self._link.drop(away_s):
            return False
        self.stats.drops += 1
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None] | None:
        if self._group is None:
            coro.close()
            return None
        task = self._group.create_task(coro, name=f"{self.device}:{name}")
        self._work.add(task)
        task.add_done_callback(self._work.discard)
        return task

    def _message_id(self, kind: str) -> str:
        return f"{kind}-{self.device}-{self._incarnation}-{next(self._ids)}"

    def _will(self) -> tuple[str, bytes]:
        round_, _, _ = self._presence
        will = status(
            self.index,
            round_=round_,
            online=False,
            reason="lost",
            message_id=self._message_id("lwt"),
            timestamp=self._clock(),
        )
        return self._status_topic, encode(will)

    async def _on_connect(self) -> None:
        round_, online, reason = self._presence
        if self._link.connections > 1:
            self.stats.count(Event.RECONNECTS)
            reason = "reconnected" if online else reason
        await self._publish_status(round_, online, reason)

    async def _goodbye(self) -> None:
        if not self._link.connected:
            return
        round_, _, _ = self._presence
        message = status(
            self.index,
            round_=round_,
            online=False,
            reason="stopped",
            message_id=self._message_id("st"),
            timestamp=self._clock(),
        )
        await self._publish(self._status_topic, encode(message), retain=True, within_s=_GOODBYE_S)

    async def _publish(self, topic: str, payload: bytes, *, retain: bool, within_s: float) -> bool:
        try:
            await self._link.publish(topic, payload, retain=retain, within_s=within_s)
        except BrokerError as exc:
            self.stats.count(Event.PUBLISH_FAILED)
            log.warning("%s: %s", self.device, exc)
            return False
        return True

    async def _publish_status(self, round_: int, online: bool, reason: str) -> bool:
        self._presence = (round_, online, reason)
        message = status(
            self.index,
            round_=round_,
            online=online,
            reason=reason,
            message_id=self._message_id("st"),
            timestamp=self._clock(),
        )
        return await self._publish(
            self._status_topic, encode(message), retain=True, within_s=self._settings.model_wait_s
        )

    # -- inputs ------------------------------------------------------------------------------

    async def _handle(self, topic: str, payload: bytes) -> None:
        item = self._filter.classify(topic, payload, time.monotonic())
        self.stats.received(_carried(item), len(payload))
        if isinstance(item, Drop):
            self.stats.dropped(item.reason)
            log.debug("%s: dropped %s: %s", self.device, item.reason, item.detail)
        elif isinstance(item, PartVersion):
            if self._store.offer(item) is Offer.NEWER:
                async with self._model_changed:
                    self._model_changed.notify_all()
        elif isinstance(item, RoundClosed):
            self._round_closed(item)
        elif isinstance(item, Assignment):
            self._assignment(item)
        elif isinstance(item, UpdateAck):
            self._ack(item)

    def _round_closed(self, closed: RoundClosed) -> None:
        if not self._rounds.close(closed.round):
            self.stats.count(Event.ROUND_REPEATED)
            return
        if self._on_round_closed is not None:
            self._on_round_closed(self.device, closed.round)
        stop_after = self._settings.stop_after_round
        if self._draining or closed.last or (stop_after and closed.round >= stop_after):
            return  # no round to announce (or no work wanted)
        if self._announce is not None:
            self._announce.cancel()  # a newer round supersedes a wait still under way
        self._announce = self._spawn(self._announce_round(closed), f"announce-r{closed.round + 1}")
        delay = self._world.drop_delay(self.index, closed.round + 1, self._settings.drop_prob)
        if delay is not None:
            self._spawn(self._drop_later(delay), f"drop-r{closed.round + 1}")

    def _assignment(self, assignment: Assignment) -> None:
        if self._draining:
            self.stats.count(Event.ASSIGNMENT_REFUSED)
            return
        take = self._rounds.take(assignment)
        if take is not Take.TRAIN:
            self.stats.count(_NOT_TAKEN[take])
            return
        # The device's round began when the matcher opened it (the assignment's timestamp), not
        # when the bus delivered it: the simulated round time already counts the download.
        started = asyncio.get_running_loop().time()
        lag = self._world.delivery_lag_s(assignment.timestamp, self._clock())
        self.stats.assignment_lags.add(lag)
        if self._settings.time_from_open:
            started -= lag
        self._spawn(self._train_and_upload(assignment, started), f"train-r{assignment.round}")

    def _ack(self, ack: UpdateAck) -> None:
        self.stats.acks[ack.status] += 1
        if ack.update_id not in self._updates:
            self.stats.count(Event.ACK_UNMATCHED)
            return
        # An ack proves the publish reached the broker even when its PUBACK was lost to a drop.
        self.stats.sent.add((ack.update_id, ack.part))
        if ack.status == "applied":
            self.stats.applied.add((ack.update_id, ack.part))
        pending = self._pending.get(ack.update_id)
        if pending is None:
            return  # already complete: e.g. the "duplicate" of a resend that crossed the ack
        if pending.on_ack(ack) is AckEffect.STRANGER:
            self.stats.count(Event.ACK_UNMATCHED)
        if pending.done:
            del self._pending[ack.update_id]
            self._acked.pop(ack.update_id).set()

    # -- work --------------------------------------------------------------------------------

    async def _wait_parts(
        self, wanted: Mapping[str, int], parts: Sequence[str]
    ) -> dict[str, PartTensors] | None:
        """The tensors of `parts` at the `wanted` versions, once held (bounded wait)."""

        def readiness() -> Readiness:
            return self._store.readiness(wanted, parts)

        try:
            async with asyncio.timeout(self._settings.model_wait_s):
                async with self._model_changed:
                    await self._model_changed.wait_for(lambda: readiness() is not Readiness.WAITING)
        except TimeoutError:
            self.stats.count(Event.MODEL_TIMEOUT)
            log.warning("%s: parts %s not received in time", self.device, dict(wanted))
            return None
        if readiness() is Readiness.OUTDATED:
            self.stats.count(Event.MODEL_OUTDATED)
            return None
        return self._store.take(parts)

    async def _announce_round(self, closed: RoundClosed) -> None:
        round_ = closed.round + 1
        if not self._world.available(self.index, round_):
            self.stats.count(Event.UNAVAILABLE)
            await self._publish_status(round_, False, "unavailable")
            return
        missing = [p for p in self._experts if p not in closed.gates]
        if missing:
            self.stats.count(Event.GATES_MISSING)
            log.warning(
                "%s: round %d closed without the gate rows of %s",
                self.device,
                closed.round,
                missing[:4],
            )
        parts = None if missing else await self._wait_parts(closed.model_versions, [SHARED])
        if parts is None:
            await self._publish_status(round_, False, "no model")
            return
        parts = {**closed.gates, **parts}
        losses = self._losses
        telemetry = self._world.telemetry(
            self.index,
            parts,
            round_=round_,
            gate_version=closed.round,
            losses=losses,
            timestamp=self._clock(),
        )
        # The telemetry itself says the device is online for the round: an online status goes
        # out only when the retained one says offline, not every round (one record per device
        # and round through the gateway, Kafka and the profiler instead of two).
        online = self._presence[1]
        if not online and not await self._publish_status(round_, True, "available"):
            return
        sent = await self._publish(
            self._telemetry_topic,
            encode(telemetry),
            retain=False,
            within_s=self._settings.model_wait_s,
        )
        if sent:
            self.stats.count(Event.TELEMETRY_SENT)
            if self._losses is losses:  # not replaced by a newer training meanwhile
                self._losses = LossReport()

    async def _train_and_upload(self, assignment: Assignment, started: float) -> None:
        self._busy += 1
        self._idle.clear()
        try:
            await self._round_of_work(assignment, started)
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()

    async def _round_of_work(self, assignment: Assignment, started: float) -> None:
        experts = list(assignment.experts)
        assigned = [expert_part_id(e) for e in experts]
        for part in assigned:  # the retained version comes with the subscription
            self._listeners[part] += 1
            for topic in self._filter.part_topics(part):
                await self._link.subscribe(topic)
        try:
            parts = await self._wait_parts(assignment.model_versions, [SHARED, *assigned])
        finally:
            for part in assigned:
                self._listeners[part] -= 1
                if not self._listeners[part]:  # no other round of work waits on it
                    for topic in self._filter.part_topics(part):
                        await self._link.unsubscribe(topic)
                    self._store.forget([part])
        if parts is None:
            return
        result = self._world.train(self.index, assignment, parts)
        self.stats.rounds_trained += 1
        self._losses = loss_report(result)
        # The simulated device is busy for its round time (download, compute, upload).
        loop = asyncio.get_running_loop()
        busy_until = started + self._world.round_wall_s(self.index, experts, assignment.round)
        await asyncio.sleep(max(busy_until - loop.time(), 0.0))
        update = build_update(
            result,
            assignment,
            train_seconds=self._scenario.round_time_s(self.index, experts, assignment.round),
            timestamp=self._clock(),
        )
        await self._upload(PendingUpdate(update, update_payloads(update)))

    async def _upload(self, pending: PendingUpdate) -> None:
        """Send until every part has a final ack; resend (same bytes) every resend_s."""
        uid = pending.update_id
        acked = asyncio.Event()
        self._pending[uid], self._acked[uid] = pending, acked
        self._updates.add(uid)
        resend_s = self._settings.resend_s
        try:
            for _ in range(1 + self._settings.max_resends):
                if await self._publish_all(pending.payloads, within_s=resend_s):
                    if pending.record_send():
                        self.stats.sent.update((uid, part) for part in pending.parts)
                        self.stats.update_bytes_sent += sum(map(len, pending.payloads))
                    else:
                        self.stats.resends += 1
                try:
                    async with asyncio.timeout(resend_s):
                        await acked.wait()
                    return
                except TimeoutError:
                    continue
            self.stats.count(Event.UPDATE_ABANDONED)
            log.warning("%s: gave update %s up after %d sends", self.device, uid, pending.sends)
        finally:
            self._pending.pop(uid, None)
            self._acked.pop(uid, None)

    async def _publish_all(self, payloads: tuple[bytes, ...], *, within_s: float) -> bool:
        """Publish an update's payloads in order; False at the first that failed."""
        for payload in payloads:
            if not await self._publish(
                self._update_topic, payload, retain=False, within_s=within_s
            ):
                return False
        return True

    async def _drop_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.drop_connection(self._settings.reconnect_s)


def _carried(item: Inbound | Drop) -> Received:
    if isinstance(item, Drop):
        return Received.DROPPED
    if isinstance(item, PartVersion | ChunkHeld):
        return Received.MODEL
    if isinstance(item, RoundClosed):
        return Received.ROUND
    return Received.CONTROL
