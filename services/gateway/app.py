"""The gateway process: wiring of `logic` to MQTT (aiomqtt) and Kafka (aiokafka), and `main`.

    devices ──MQTT──► Ingress ──► Kafka telemetry / updates / dead-letter
                        ├─ per-device token bucket first: over the rate, dropped and counted
                        │  (`rate_limited`), one sampled dead letter per device and interval;
                        │  a retained publish (but status) is refused (`retained_rejected`)
                        └─ PUBACK to the device only after Kafka acked every record of it
    devices ◄─MQTT── EgressHandler ◄── ServiceRuntime ◄── Kafka assignments/acks/model/rounds
                        └─ the Kafka offset is committed after the MQTT publish completed
                           (of `rounds` only RoundClosed goes out; the rest is skipped, counted)

One `MqttSession` (persistent, manual PUBACK) carries both directions. A dropped MQTT
connection is re-established with capped backoff: the ingress restarts on the new connection
(the broker redelivers whatever was not acknowledged) and egress publishes fail as retriable
(`BrokerUnavailable`) meanwhile, so the runtime retries them without committing.

Stop (SIGTERM): stop reading MQTT, let in-flight messages reach Kafka and be PUBACKed, let the
egress runtime deliver and commit what it holds, then disconnect (the session stays at the
broker) and stop the producer; every step is bounded by `drain_timeout_s` or the broker timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from brokers.errors import BrokerError
from brokers.kafka import KafkaProducer, Producer
from brokers.mqtt import MqttMessage, MqttSession
from brokers.settings import BrokerSettings
from schemas import encode
from schemas.chunks import split
from schemas.errors import SchemaError
from schemas.limits import MAX_MESSAGE_BYTES
from schemas.messages import Message
from schemas.topics import Topic, TopicTable
from services.deadletter import dead_letter
from services.entrypoint import service_main
from services.errors import InvalidPayload
from services.gateway.logic import (
    Forward,
    Reject,
    Skip,
    check_retained,
    parse_device_topic,
    route_inbound,
    route_outbound,
    subscriptions,
)
from services.gateway.ratelimit import Admission, DeviceRateLimiter, message_cost
from services.gateway.settings import GatewaySettings
from services.handler import InboundRecord, Outbound
from services.metrics import Outcome, ServiceMetrics
from services.runtime import (
    Backoff,
    Delivery,
    EncodedRecord,
    RuntimeSettings,
    ServiceRuntime,
    encode_outbound,
    stop_on_signals,
)

log = logging.getLogger(__name__)

NAME = "gateway"
EGRESS_TOPICS = (Topic.ASSIGNMENTS, Topic.ACKS, Topic.MODEL, Topic.ROUNDS)


class MqttPublisher(Protocol):
    """The MQTT side the egress handler needs."""

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and wait for the broker's acknowledgement; `BrokerError` on failure."""
        ...


class EgressHandler:
    """Kafka → MQTT: publish each record where `route_outbound` says; no Kafka output.

    The runtime commits the record's offset only after this returned, i.e. after the QoS 1
    publish was acknowledged by the MQTT broker; a failed publish (`BrokerUnavailable`,
    `BrokerTimeout`) is retried by the runtime.
    """

    def __init__(
        self, table: TopicTable, publisher: MqttPublisher, metrics: ServiceMetrics
    ) -> None:
        self._table = table
        self._publisher = publisher
        self._metrics = metrics

    async def handle(self, record: InboundRecord) -> list[Outbound]:
        """Publish one record; `InvalidPayload` (→ dead letter) when it has no MQTT home."""
        decision = route_outbound(self._table, record.topic, record.message)
        if isinstance(decision, Reject):
            raise InvalidPayload(decision.error, decision.reason)
        if isinstance(decision, Skip):
            self._metrics.inc(Outcome.SKIPPED)
            return []
        for publish in decision:
            payload = record.raw if publish.payload is None else publish.payload
            for topic, data in _mqtt_payloads(publish.topic, payload, record.message):
                await self._publisher.publish(topic, data, qos=1, retain=publish.retain)
                self._metrics.inc(Outcome.PUBLISHED)
        return []


def _mqtt_payloads(topic: str, payload: bytes, message: Message) -> list[tuple[str, bytes]]:
    """`payload` on `topic`, or, when larger than one message, its chunks on `{topic}/{i}`:
    each chunk on a topic of its own, so every one of them stays retained."""
    if len(payload) <= MAX_MESSAGE_BYTES:
        return [(topic, payload)]
    chunks = split(payload, message, key=topic.rsplit("/", 1)[-1])
    return [(f"{topic}/{c.index}", encode(c)) for c in chunks]


@dataclass(frozen=True, slots=True)
class _InFlight:
    message: MqttMessage
    delivery: Delivery


class Ingress:
    """MQTT → Kafka over one connection; PUBACKs in arrival order, each after its Kafka acks.

    Two named tasks: `gateway:mqtt-read` routes each message (`logic.route_inbound`), enqueues
    its records on the producer and hands it to `gateway:puback` through a window of at most
    `window` messages; `gateway:puback` awaits every ack of the oldest message, then sends its
    PUBACK. A message whose records were not all acknowledged is never PUBACKed, so the broker
    redelivers it to this session (at-least-once; redelivered updates re-split into the same
    part message ids).
    """

    def __init__(
        self,
        *,
        session: MqttSession,
        producer: Producer,
        table: TopicTable,
        metrics: ServiceMetrics,
        backoff: Backoff,
        window: int,
        clock: Callable[[], float] = time.time,
        limiter: DeviceRateLimiter | None = None,
        notes: Counter[str] | None = None,
    ) -> None:
        self._limiter = limiter
        # The gateway's own counts (rate_limited, retained_rejected), shown with its metrics.
        self.notes: Counter[str] = notes if notes is not None else Counter()
        self._session = session
        self._producer = producer
        self._table = table
        self._metrics = metrics
        self._backoff = backoff
        self._window = window
        self._clock = clock
        self._dead_letter_topic = table.name(Topic.DEAD_LETTER)

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set (then drain what is in flight) or the connection drops."""
        window: asyncio.Queue[_InFlight | None] = asyncio.Queue(maxsize=self._window)
        try:
            async with asyncio.TaskGroup() as group:
                reader = group.create_task(self._read(window, stop), name=f"{NAME}:mqtt-read")
                acker = group.create_task(self._puback(window, stop), name=f"{NAME}:puback")
                stopped = group.create_task(stop.wait(), name=f"{NAME}:stop-watch")
                await asyncio.wait({reader, stopped}, return_when=asyncio.FIRST_COMPLETED)
                # Either stop was asked (stop reading) or the reader ended: no more input.
                reader.cancel()
                stopped.cancel()
                await asyncio.wait({reader})
                await window.put(None)
                await acker
        except BaseExceptionGroup as group_error:
            raise _first(group_error) from None

    async def _read(self, window: asyncio.Queue[_InFlight | None], stop: asyncio.Event) -> None:
        async for message in self._session.messages():
            self._metrics.inc(Outcome.RECEIVED)
            delivery = await self._deliver(message, stop)
            if delivery is None:
                return  # interrupted by stop: the message stays unacknowledged
            await window.put(_InFlight(message, delivery))

    async def _puback(self, window: asyncio.Queue[_InFlight | None], stop: asyncio.Event) -> None:
        while (item := await window.get()) is not None:
            if not await item.delivery.confirm():
                return  # interrupted: this and later messages are redelivered
            if self._session.ack(item.message):
                self._metrics.inc(Outcome.PUBACKED)

    async def _deliver(self, message: MqttMessage, stop: asyncio.Event) -> Delivery | None:
        records = self._records(message)
        delivery = Delivery(self._producer, self._metrics, self._backoff, stop)
        return delivery if await delivery.send(records) else None

    def _records(self, message: MqttMessage) -> list[EncodedRecord]:
        parsed = parse_device_topic(self._table, message.topic)
        if parsed is not None:
            device, kind = parsed
            if self._limiter is not None:
                admission = self._limiter.admit(device, message_cost(len(message.payload)))
                if admission is not Admission.PASS:
                    self.notes["rate_limited"] += 1
                    if admission is Admission.DROP:
                        return []  # PUBACKed and dropped: resending sooner gains nothing
                    reason = f"over the rate limit ({self.notes['rate_limited']} dropped so far)"
                    return [self._dead_letter(message, Reject(reason, "RateLimited", device))]
            retained = check_retained(kind, message.retain, device)
            if retained is not None:
                self.notes["retained_rejected"] += 1
                return [self._dead_letter(message, retained)]
        decision = route_inbound(self._table, message.topic, message.payload)
        if isinstance(decision, Forward):
            try:
                records = [r for o in decision.outputs for r in encode_outbound(o, self._table)]
            except SchemaError as exc:
                decision_reject = Reject(f"cannot encode: {exc}", type(exc).__name__)
            else:
                self._metrics.inc(Outcome.HANDLED)
                return records
        else:
            decision_reject = decision
        return [self._dead_letter(message, decision_reject)]

    def _dead_letter(self, message: MqttMessage, reject: Reject) -> EncodedRecord:
        self._metrics.inc(Outcome.DEAD_LETTERED)
        log.warning(
            "%s: dead letter from %s: %s (%s)", NAME, message.topic, reject.reason, reject.error
        )
        digest = hashlib.sha256(message.payload).hexdigest()[:24]
        letter = dead_letter(
            source=message.topic,
            reason=reject.reason,
            error=reject.error,
            original=message.payload,
            message_id=f"mqtt:{digest}:{message.topic}",
            device_id=reject.device,
            service=NAME,
            now=self._clock(),
        )
        (record,) = encode_outbound(
            Outbound(self._dead_letter_topic, message.topic, letter), self._table
        )
        return record


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf of an exception group (one failing task is the usual case)."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class Gateway:
    """The whole gateway as one async context manager (see the module docstring)."""

    def __init__(
        self,
        broker: BrokerSettings,
        settings: GatewaySettings,
        runtime: RuntimeSettings | None = None,
        *,
        metrics: ServiceMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._broker = broker
        self.settings = settings
        self.runtime_settings = runtime if runtime is not None else RuntimeSettings()
        self.notes: Counter[str] = Counter()
        self.metrics = metrics if metrics is not None else ServiceMetrics(NAME, self.notes)
        self._clock = clock
        self._table = broker.topic_table()
        self._session = MqttSession(
            broker,
            client_id=settings.client_id,
            session_expiry_s=settings.session_expiry_s,
            receive_maximum=settings.window,
            keepalive_s=settings.keepalive_s,
        )
        self._stopping = asyncio.Event()
        self._connected = asyncio.Event()
        self._stack: AsyncExitStack | None = None
        self._mqtt_task: asyncio.Task[None] | None = None
        self._egress: ServiceRuntime | None = None

    @property
    def connected(self) -> asyncio.Event:
        """Set while the MQTT session is connected and subscribed."""
        return self._connected

    def _mqtt_ready(self) -> tuple[bool, str]:
        # Kafka alone is half a gateway: no device is served while MQTT is down.
        if self._connected.is_set():
            return True, "ready"
        return False, "MQTT session not connected"

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("Gateway is not reentrant")
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            producer = await stack.enter_async_context(
                KafkaProducer(self._broker, client_id=f"{self.settings.client_id}-producer")
            )
            group = await stack.enter_async_context(asyncio.TaskGroup())
            self._mqtt_task = group.create_task(self._mqtt_loop(producer), name=f"{NAME}:mqtt")
            # Entered last, so it stops first: egress publishes need the MQTT session.
            self._egress = await stack.enter_async_context(
                ServiceRuntime(
                    self._broker,
                    name=NAME,
                    handler=EgressHandler(self._table, self._session, self.metrics),
                    inputs=EGRESS_TOPICS,
                    group_id=self.settings.group_id,
                    settings=self.runtime_settings,
                    producer=producer,
                    metrics=self.metrics,
                    clock=self._clock,
                    also_ready=self._mqtt_ready,
                )
            )
        except BaseException as exc:
            self._stopping.set()
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._stack = stack
        return self

    def stop(self) -> None:
        """Drain and stop both directions (safe to call more than once)."""
        self._stopping.set()
        if self._egress is not None:
            self._egress.stop()

    async def wait(self) -> None:
        """Return when both directions have stopped."""
        if self._mqtt_task is not None:
            await asyncio.wait({self._mqtt_task})
        if self._egress is not None:
            await self._egress.wait()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        self.stop()
        task = self._mqtt_task
        if task is not None and not task.done():
            limit = 2 * self.runtime_settings.drain_timeout_s
            _, pending = await asyncio.wait({task}, timeout=limit)
            if pending:
                log.warning("%s: MQTT side did not drain within %.1fs; cancelling", NAME, limit)
                task.cancel()
        try:
            await stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            raise _first(group) from None

    async def _mqtt_loop(self, producer: Producer) -> None:
        settings = self.settings
        backoff = Backoff(self.runtime_settings.retry_initial_s, settings.reconnect_max_s)
        ingress = Ingress(
            session=self._session,
            producer=producer,
            table=self._table,
            metrics=self.metrics,
            backoff=Backoff(
                self.runtime_settings.retry_initial_s, self.runtime_settings.retry_max_s
            ),
            window=settings.window,
            clock=self._clock,
            limiter=_limiter(settings),
            notes=self.notes,
        )
        share = settings.share_group if settings.shared_subscription else None
        attempt = 0
        while not self._stopping.is_set():
            try:
                async with self._session:
                    for topic_filter in subscriptions(self._table, share):
                        # Retain as published: a device's live retained publish is seen
                        # as such and refused (`check_retained`), not only its replays.
                        await self._session.subscribe(topic_filter, qos=1, retain_as_published=True)
                    log.info("%s: subscribed %s", NAME, subscriptions(self._table, share))
                    attempt = 0
                    self._connected.set()
                    await ingress.run(self._stopping)
                    if self._stopping.is_set():
                        await self._drain_egress()
            except BrokerError as exc:
                if not exc.retriable:
                    raise
                attempt += 1
                self.metrics.inc(Outcome.RETRIED)
                log.warning("%s: MQTT connection lost (try %d): %s", NAME, attempt, exc)
                await backoff.sleep(attempt, self._stopping)
            finally:
                self._connected.clear()

    async def _drain_egress(self) -> None:
        """Keep the connection until the egress runtime delivered what it holds (bounded)."""
        if self._egress is None:
            return
        try:
            async with asyncio.timeout(self.runtime_settings.drain_timeout_s):
                await self._egress.wait()
        except TimeoutError:
            log.warning("%s: egress did not drain in time; disconnecting anyway", NAME)


def _limiter(settings: GatewaySettings) -> DeviceRateLimiter | None:
    limit = settings.rate_limit()
    return None if limit is None else DeviceRateLimiter(limit, time.monotonic)


async def run_gateway(
    broker: BrokerSettings, settings: GatewaySettings, runtime: RuntimeSettings
) -> None:
    """Run a gateway until SIGTERM / SIGINT, then drain and stop."""
    async with Gateway(broker, settings, runtime) as gateway:
        with stop_on_signals(gateway.stop):
            await gateway.wait()


DESCRIPTION = (
    "MQTT ↔ Kafka gateway: device telemetry, status and updates into Kafka "
    "(PUBACK after Kafka's ack); assignments, acks, model weights and closed rounds out to "
    "devices."
)


def main(argv: Sequence[str]) -> int:
    """Entry point of `fedmoe service gateway`."""
    return service_main(
        argv,
        name=NAME,
        description=DESCRIPTION,
        settings=(GatewaySettings, BrokerSettings, RuntimeSettings),
        run=lambda gateway, broker, runtime: run_gateway(broker, gateway, runtime),
    )
