"""`fedmoe replay` against brokers: publish a recording back into a deployment.

Records go back where they came from, renamed into the target deployment: an MQTT record to
its topic under the target root (QoS and retain as recorded), a Kafka record to its topic in
the target namespace (its key kept). Publishes overlap up to `window` in flight (QoS 1 PUBACKs,
Kafka acks), so `--speed max` measures the broker path rather than one round trip per record.

Timed mode follows `recording.schedule` (due times from the start; the report gives the
schedule error and the achieved rate). Round-synchronous mode (`--follow-rounds`) follows
`recording.follow`: it watches the live `{root}/round` (retained RoundClosed) and the live
assignments, announces recorded round k when the live system closed its round, sends its
updates after the live round opened, and compares the live assignments with the recorded ones
(the parity report).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiomqtt

from brokers.kafka import KafkaProducer, RecordAck
from brokers.mqtt import mqtt_client, translate
from brokers.settings import BrokerSettings
from recording.follow import (
    RecordedRound,
    RoundFollower,
    Timed,
    played_rounds,
    recorded_rounds,
)
from recording.format import KAFKA, MQTT, Record
from recording.reader import Recording
from recording.rewrite import IdMap, rewrite
from recording.schedule import Clock, Lateness, Sleep, Timeline, wait_until
from recording.settings import ReplaySettings, split
from schemas import decode
from schemas.errors import SchemaError
from schemas.messages import Assignment, RoundClosed
from schemas.topics import MqttTopic

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Filters:
    """Which records a replay sends (empty sets: all)."""

    devices: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    from_s: float = 0.0
    to_s: float = 0.0  # 0: to the end

    @classmethod
    def of(cls, settings: ReplaySettings) -> Filters:
        """The filters `settings` name."""
        types = frozenset(split(settings.types))
        return cls(
            frozenset(split(settings.devices)),
            frozenset() if "all" in types else types,
            settings.from_s,
            settings.to_s,
        )

    def select(self, records: Iterable[Record]) -> list[Record]:
        """The records that pass, in arrival order."""
        chosen = sorted(records, key=lambda r: r.t_ns)
        if not chosen:
            return []
        t0 = chosen[0].t_ns
        lo = t0 + int(self.from_s * 1e9)
        hi = t0 + int(self.to_s * 1e9) if self.to_s else None
        return [
            r
            for r in chosen
            if r.t_ns >= lo
            and (hi is None or r.t_ns < hi)
            and (not self.devices or r.device in self.devices)
            and (not self.types or r.type in self.types)
        ]


@dataclass(frozen=True, slots=True)
class Renamer:
    """Recorded topic names → the target deployment's."""

    from_root: str
    to_root: str
    from_namespace: str
    to_namespace: str

    def mqtt(self, topic: str) -> str:
        """`{old root}/rest` → `{new root}/rest`."""
        head, sep, rest = topic.partition("/")
        return f"{self.to_root}{sep}{rest}" if head == self.from_root else topic

    def kafka(self, topic: str) -> str:
        """`{old namespace}.name` → `{new namespace}.name`."""
        prefix = f"{self.from_namespace}."
        return self.to_namespace + "." + topic[len(prefix) :] if topic.startswith(prefix) else topic


def renamer_for(recording: Recording, records: Sequence[Record], broker: BrokerSettings) -> Renamer:
    """The renaming from what the recording says (or shows) to `broker`'s names."""
    info = recording.info
    root = info.get("mqtt_root")
    if not isinstance(root, str):
        roots = {r.topic.split("/", 1)[0] for r in records if r.source == MQTT}
        root = roots.pop() if len(roots) == 1 else broker.mqtt_root
    namespace = info.get("namespace")
    if not isinstance(namespace, str):
        spaces = {r.topic.split(".", 1)[0] for r in records if r.source == KAFKA}
        namespace = spaces.pop() if len(spaces) == 1 else broker.namespace
    return Renamer(root, broker.mqtt_root, namespace, broker.namespace)


class Sender(Protocol):
    """Where a replay's records go (`Outbox` for brokers; a list in tests)."""

    async def send(self, record: Record, topic: str, payload: bytes) -> None:
        """Start sending one record."""
        ...


@dataclass
class Outbox:
    """Publishes to both brokers with at most `window` in flight; counts what was acked."""

    broker: BrokerSettings
    window: int
    client_id: str
    mqtt: aiomqtt.Client | None = None
    kafka: KafkaProducer | None = None
    acked: int = 0
    failed: int = 0
    _slots: asyncio.Semaphore = field(init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.window)

    async def send(self, record: Record, topic: str, payload: bytes) -> None:
        """Start one publish (waits only for a free slot)."""
        await self._slots.acquire()
        task = asyncio.create_task(self._one(record, topic, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _one(self, record: Record, topic: str, payload: bytes) -> None:
        timeout = self.broker.request_timeout_s
        try:
            if record.source == KAFKA:
                if self.kafka is None:
                    raise RuntimeError("no Kafka producer")
                ack: RecordAck = await (await self.kafka.send(topic, record.key, payload))
                del ack
            else:
                if self.mqtt is None:
                    raise RuntimeError("no MQTT client")
                await self.mqtt.publish(
                    topic,
                    payload,
                    qos=record.qos if record.qos is not None else 1,
                    retain=bool(record.retain),
                    timeout=timeout,
                )
            self.acked += 1
        except Exception as exc:  # one failed publish is counted, the replay goes on
            self.failed += 1
            log.warning("replay: publish to %s failed: %s", topic, exc)
        finally:
            self._slots.release()

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for every publish in flight."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def _connected(
    broker: BrokerSettings, client_id: str, mqtt: bool, window: int
) -> AsyncIterator[aiomqtt.Client | None]:
    client = None
    if mqtt:
        client = mqtt_client(
            broker, client_id=f"{client_id}-{uuid.uuid4().hex[:6]}", persistent=False
        )
        # A window of publishes in flight is the point here, not a symptom worth a warning.
        client.pending_calls_threshold = window + 1
        try:
            async with asyncio.timeout(broker.request_timeout_s + 1.0):
                await client.__aenter__()
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            raise translate(exc, f"replay connect to {broker.mqtt_url}") from exc
    try:
        yield client
    finally:
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                async with asyncio.timeout(broker.request_timeout_s + 1.0):
                    await client.__aexit__(None, None, None)


class Replayer:
    """One replay of `records` into `broker` (see the module docstring)."""

    def __init__(
        self,
        broker: BrokerSettings,
        settings: ReplaySettings,
        records: Sequence[Record],
        renamer: Renamer,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        wall: Clock = time.time,
    ) -> None:
        self.broker = broker
        self.settings = settings
        self.records = list(records)
        self.renamer = renamer
        self.clock = clock
        self.sleep = sleep
        self.wall = wall
        self.ids = IdMap()
        self.lateness = Lateness()

    def _out(self, record: Record, loop: int, round_: int | None) -> tuple[str, bytes]:
        topic = (
            self.renamer.kafka(record.topic)
            if record.source == KAFKA
            else self.renamer.mqtt(record.topic)
        )
        payload = record.payload
        if self.settings.rewrite and record.message_id is not None:
            payload = rewrite(
                payload,
                message_id=self.ids.fresh(record.message_id, loop),
                timestamp=self.wall(),
                round=round_,
            )
        elif round_ is not None:
            payload = rewrite(payload, round=round_)
        return topic, payload

    async def run(self) -> dict[str, Any]:
        """Replay; returns the report."""
        need_mqtt = self.settings.follow_rounds or any(r.source == MQTT for r in self.records)
        need_kafka = any(r.source == KAFKA for r in self.records)
        async with _connected(
            self.broker, self.settings.client_id, need_mqtt, self.settings.window
        ) as client:
            outbox = Outbox(self.broker, self.settings.window, self.settings.client_id, client)
            producer = (
                KafkaProducer(self.broker, client_id=self.settings.client_id)
                if need_kafka
                else None
            )
            async with producer if producer is not None else contextlib.nullcontext():
                outbox.kafka = producer
                started = self.clock()
                if self.settings.follow_rounds:
                    extra = await self._follow(outbox, client)
                else:
                    extra = await self.play_timed(outbox)
                await outbox.drain(self.broker.request_timeout_s * 2)
                elapsed = (self.lateness.last or started) - started
        report = self.lateness.report(max(elapsed, 1e-9))
        report.update({"acked": outbox.acked, "failed": outbox.failed, **extra})
        return report

    async def play_timed(self, outbox: Sender) -> dict[str, Any]:
        """Every selected record at its due time (loops included) into `outbox`."""
        speed = self.settings.speed_factor()
        timeline = Timeline.of([r.t_ns for r in self.records], speed)
        start = self.clock()
        for loop in range(self.settings.loop):
            for record in self.records:
                due = start + timeline.offset(record.t_ns, loop)
                await wait_until(due, self.clock, self.sleep)
                self.lateness.note(due, self.clock())
                topic, payload = self._out(record, loop, None)
                await outbox.send(record, topic, payload)
        return {"mode": "timed", "speed": self.settings.speed, "loops": self.settings.loop}

    async def _emit(self, outbox: Sender, batch: Sequence[Timed], start: float) -> None:
        for item in batch:
            due = start + item.delay_s
            await wait_until(due, self.clock, self.sleep)
            self.lateness.note(due, self.clock())
            topic, payload = self._out(item.record, 0, item.round)
            await outbox.send(item.record, topic, payload)

    async def _follow(self, outbox: Outbox, client: aiomqtt.Client | None) -> dict[str, Any]:
        if client is None:
            raise RuntimeError("follow-rounds needs MQTT")
        # Rounds some device announced itself for; status-only rounds (the connects' round 0,
        # goodbyes after the last one) map onto no live round.
        rounds = played_rounds(self.records, recorded_rounds(self.records))
        recorded_assign = recorded_assignments(self.records)
        speed = self.settings.speed_factor() or 1.0
        follower = RoundFollower(rounds, speed=speed)
        table = self.broker.topic_table()
        timeout = self.broker.request_timeout_s
        await client.subscribe(table.mqtt(MqttTopic.ROUND), qos=1, timeout=timeout)
        await client.subscribe(table.mqtt(MqttTopic.ASSIGNMENT), qos=1, timeout=timeout)
        live_assign: dict[int, dict[str, tuple[int, ...]]] = {}
        last_live: int | None = None
        emitting: set[asyncio.Task[None]] = set()

        def spawn(batch: list[Timed]) -> None:
            if batch:
                task = asyncio.create_task(self._emit(outbox, batch, self.clock()))
                emitting.add(task)
                task.add_done_callback(emitting.discard)

        messages = aiter(client.messages)
        while True:
            try:
                async with asyncio.timeout(self.settings.idle_timeout_s):
                    message = await anext(messages)
            except TimeoutError:
                log.warning("replay: no live round closed for %.0fs", self.settings.idle_timeout_s)
                break
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                continue
            try:
                decoded = decode(bytes(payload))
            except SchemaError:
                continue
            if isinstance(decoded, RoundClosed):
                if last_live is not None and decoded.round >= last_live:
                    break  # the live round that replayed the last recorded round closed
                batch = follower.on_round_closed(decoded.round)
                spawn(batch)
                if follower.done and last_live is None:
                    last_live = decoded.round + 1
            elif isinstance(decoded, Assignment):
                live_assign.setdefault(decoded.round, {})[decoded.device_id] = decoded.experts
                spawn(follower.on_round_opened(decoded.round))
        if emitting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout * 2):
                    await asyncio.gather(*emitting, return_exceptions=True)
        return {
            "mode": "follow-rounds",
            "round_map": {str(k): v for k, v in follower.mapping.items()},
            "parity": parity(follower.mapping, live_assign, recorded_assign),
        }


def recorded_assignments(records: Iterable[Record]) -> dict[int, dict[str, tuple[int, ...]]]:
    """Recorded round → device → experts, from recorded Assignment messages (MQTT or Kafka)."""
    out: dict[int, dict[str, tuple[int, ...]]] = {}
    for r in records:
        if r.type != "assignment":
            continue
        try:
            message = decode(r.payload)
        except SchemaError:
            continue
        if isinstance(message, Assignment):
            out.setdefault(message.round, {})[message.device_id] = message.experts
    return out


def parity(
    mapping: dict[int, int],
    live: dict[int, dict[str, tuple[int, ...]]],
    recorded: dict[int, dict[str, tuple[int, ...]]],
) -> dict[str, Any]:
    """Per replayed round: do the live assignments equal the recorded ones?"""
    rounds = []
    for live_round, rec_round in sorted(mapping.items()):
        if rec_round not in recorded:
            continue
        got, want = live.get(live_round, {}), recorded[rec_round]
        pairs_want = {(d, e) for d, es in want.items() for e in es}
        pairs_got = {(d, e) for d, es in got.items() for e in es}
        rounds.append(
            {
                "live_round": live_round,
                "recorded_round": rec_round,
                "equal": got == want,
                "recorded_pairs": len(pairs_want),
                "live_pairs": len(pairs_got),
                "common_pairs": len(pairs_want & pairs_got),
            }
        )
    return {
        "rounds_compared": len(rounds),
        "rounds_equal": sum(r["equal"] for r in rounds),
        "rounds": rounds,
    }


def selected(recording: Recording, settings: ReplaySettings) -> list[Record]:
    """The recording's records a replay with `settings` sends (assignments kept for the
    follow-rounds reference times and the parity report; they are never sent)."""
    records = list(recording.records())
    filters = Filters.of(settings)
    if settings.follow_rounds:
        sent = filters.select(r for r in records if r.type != "assignment")
        return sorted(sent + [r for r in records if r.type == "assignment"], key=lambda r: r.t_ns)
    return filters.select(records)


__all__ = ["Filters", "RecordedRound", "Renamer", "Replayer", "parity", "selected"]
