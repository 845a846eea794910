"""`ServiceRuntime`: the async context manager every service runs its handler in.

    async with ServiceRuntime(broker, name="profiler", handler=h,
                              inputs=[Topic.TELEMETRY], group_id="profiler") as runtime:
        with stop_on_signals(runtime.stop):
            await runtime.wait()

On enter it starts the producer (unless one is passed in, e.g. shared with the gateway's MQTT
side), the consumer in its group with the loop as rebalance listener, and an
`asyncio.TaskGroup` with two named tasks: `<name>:consume` (the loop) and `<name>:metrics` (the
periodic metrics line), and, when `FEDMOE_METRICS_PORT` is set, the process's HTTP endpoint
(`/metrics`, `/healthz`, `/readyz`: `services.runtime.http`). On exit it stops the loop, waits
up to `drain_timeout_s` for it to deliver and commit what is in hand (then cancels it), and
stops the consumer and the producer, each bounded by the broker timeout. A fatal error of the
loop cancels the body and is raised from `__aexit__` as itself (not wrapped in an
ExceptionGroup).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from types import TracebackType
from typing import Self

from brokers.kafka import Consumer, KafkaConsumer, KafkaProducer, Producer, RebalanceListener
from brokers.settings import BrokerSettings
from fedmoe.signals import stop_on_signals
from schemas.topics import Topic
from services.handler import Handler
from services.metrics import ServiceMetrics, log_periodically, prometheus_registry
from services.runtime.http import MetricsServer, Readiness
from services.runtime.loop import ConsumeLoop
from services.runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)

ConsumerFactory = Callable[
    [Sequence[str], str, RebalanceListener], AbstractAsyncContextManager[Consumer]
]
"""Builds the consumer: (concrete topics, group id, rebalance listener) → context manager."""


class ServiceRuntime:
    """Runs one handler over its input topics with the runtime's guarantees (see `loop`).

    Args:
        broker: where Kafka is, the namespace, acks and timeouts.
        name: the service's name (logs, metrics, client ids, dead letters' fallback device).
        handler: the `Handler` (optionally a `Ticker` and/or a `Checkpointer`).
        inputs: logical `Topic`s (resolved in the namespace) or concrete topic names.
        group_id: the consumer group (instances of one service share it).
        settings: batching, retry, tick, drain and rebalance knobs.
        producer: a started producer to use (not stopped here); by default one is built.
        consumer_factory: builds the consumer; by default a `KafkaConsumer`.
        metrics: counters to add to (by default a new `ServiceMetrics(name)`).
        clock: wall clock for ticks and dead letters.
        also_ready: a further readiness condition for `/readyz` (`ready`).
    """

    def __init__(
        self,
        broker: BrokerSettings,
        *,
        name: str,
        handler: Handler,
        inputs: Sequence[Topic | str],
        group_id: str,
        settings: RuntimeSettings | None = None,
        producer: Producer | None = None,
        consumer_factory: ConsumerFactory | None = None,
        metrics: ServiceMetrics | None = None,
        clock: Callable[[], float] = time.time,
        also_ready: Readiness | None = None,
    ) -> None:
        if not inputs:
            raise ValueError("ServiceRuntime needs at least one input topic")
        self._broker = broker
        self.name = name
        self._handler = handler
        table = broker.topic_table()
        self._table = table
        self.topics = [table.name(t) if isinstance(t, Topic) else t for t in inputs]
        self.group_id = group_id
        self.settings = settings if settings is not None else RuntimeSettings()
        self._producer = producer
        self._consumer_factory = consumer_factory or self._kafka_consumer
        self.metrics = metrics if metrics is not None else ServiceMetrics(name)
        self._clock = clock
        self._also_ready = also_ready
        self._loop: ConsumeLoop | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._stack: AsyncExitStack | None = None
        self._done = asyncio.Event()
        self.metrics_server: MetricsServer | None = None  # when FEDMOE_METRICS_PORT is set

    def ready(self) -> tuple[bool, str]:
        """`/readyz`: consuming and caught up, and whatever `also_ready` adds (the gateway's
        MQTT session)."""
        ready, why = self.metrics.ready(self.settings.ready_max_lag)
        if ready and self._also_ready is not None:
            return self._also_ready()
        return ready, why

    def _kafka_consumer(
        self, topics: Sequence[str], group_id: str, listener: RebalanceListener
    ) -> AbstractAsyncContextManager[Consumer]:
        return KafkaConsumer(
            self._broker,
            topics=topics,
            group_id=group_id,
            client_id=f"{self.name}-consumer",
            listener=listener,
            auto_offset_reset=self.settings.auto_offset_reset,
            session_timeout_s=self.settings.session_timeout_s,
            max_poll_interval_s=self.settings.max_poll_interval_s,
        )

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("ServiceRuntime is not reentrant")
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            producer = self._producer
            if producer is None:
                producer = await stack.enter_async_context(
                    KafkaProducer(self._broker, client_id=f"{self.name}-producer")
                )
            loop = ConsumeLoop(
                name=self.name,
                handler=self._handler,
                producer=producer,
                table=self._table,
                settings=self.settings,
                metrics=self.metrics,
                clock=self._clock,
            )
            consumer = await stack.enter_async_context(
                self._consumer_factory(self.topics, self.group_id, loop)
            )
            if self.settings.metrics_port:
                self.metrics_server = await stack.enter_async_context(
                    MetricsServer(
                        prometheus_registry(self.metrics),
                        self.ready,
                        host=self.settings.metrics_host,
                        port=self.settings.metrics_port,
                    )
                )
            group = await stack.enter_async_context(asyncio.TaskGroup())
            self._loop = loop
            self._loop_task = group.create_task(
                self._consume(loop, consumer), name=f"{self.name}:consume"
            )
            group.create_task(
                log_periodically(self.metrics, self.settings.metrics_interval_s, self._done),
                name=f"{self.name}:metrics",
            )
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._stack = stack
        log.info("%s: consuming %s as group %s", self.name, self.topics, self.group_id)
        return self

    async def _consume(self, loop: ConsumeLoop, consumer: Consumer) -> None:
        self.metrics.running = True
        try:
            await loop.run(consumer)
        finally:
            self.metrics.running = False
            self._done.set()

    def stop(self) -> None:
        """Ask the loop to finish what it holds and end (safe to call more than once)."""
        if self._loop is not None:
            self._loop.stop()

    async def wait(self) -> None:
        """Return when the loop has ended (after `stop()`, or cancelled by its own failure)."""
        await self._done.wait()

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
        task = self._loop_task
        if task is not None and not task.done():
            _, pending = await asyncio.wait({task}, timeout=self.settings.drain_timeout_s)
            if pending:
                log.warning(
                    "%s: in-flight work did not drain within %.1fs; cancelling it",
                    self.name,
                    self.settings.drain_timeout_s,
                )
                task.cancel()
        try:
            await stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # One failing task is the usual case: raise it as itself.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            log.info("%s: stopped; %s", self.name, self.metrics.log_line())


async def run_until_stopped(runtime: ServiceRuntime) -> None:
    """Enter `runtime`, stop it on SIGTERM / SIGINT, return when it has drained and stopped."""
    async with runtime:
        with stop_on_signals(runtime.stop):
            await runtime.wait()
