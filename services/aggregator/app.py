"""The aggregator process: `AggregatorHandler` in the one runtime over `updates`, and `main`.

    updates (markers, PartUpdates; key = part id) ──► AggregatorHandler ──► acks (UpdateAck)
                                                           │             ──► model (PartVersion)
                                                           │             ──► rounds (PartClosed)
                                                           └─► <checkpoint_dir>/<ns>/<part>.ckpt

Instances share the parts through the consumer group (`group_id`); see the package docs for
how a part's state follows it across rebalances and crashes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from brokers.settings import BrokerSettings
from fedmoe.scenario import ScenarioSettings
from moe.parts import model_layout
from moe.scenario import build_scenario
from schemas.topics import Topic
from services.aggregator.handler import AggregatorHandler
from services.aggregator.settings import AggregatorSettings
from services.aggregator.store import PartStore
from services.entrypoint import service_main
from services.runtime import RuntimeSettings, ServiceRuntime, stop_on_signals

log = logging.getLogger(__name__)

NAME = "aggregator"


def build_handler(
    settings: AggregatorSettings,
    scenario: ScenarioSettings,
    broker: BrokerSettings,
    clock: Callable[[], float] = time.time,
) -> AggregatorHandler:
    """The handler for this deployment: the scenario's model and version-0 weights, the
    configured rule, and the namespace's part directory."""
    world = build_scenario(scenario.config())
    return AggregatorHandler(
        layout=model_layout(world.model),
        initial=world.initial_parts(),
        layout_version=world.model.layout_version,
        rule=settings.aggregation_rule(),
        store=PartStore(settings.part_dir(broker.namespace)),
        grace_s=settings.grace_s,
        ledger_window=settings.ledger_window,
        clock=clock,
        name=settings.instance_id,
    )


def build_runtime(
    handler: AggregatorHandler,
    settings: AggregatorSettings,
    broker: BrokerSettings,
    runtime: RuntimeSettings,
) -> ServiceRuntime:
    """The runtime that feeds `handler` from `updates` as a member of the aggregator group."""
    return ServiceRuntime(
        broker,
        name=settings.instance_id,
        handler=handler,
        inputs=[Topic.UPDATES],
        group_id=settings.group_id,
        settings=runtime,
    )


async def log_stats(
    handler: AggregatorHandler, interval_s: float, stopped: Callable[[], Awaitable[None]]
) -> None:
    """Log the handler's verdict and close counts every `interval_s` until `stopped()`."""
    while True:
        try:
            async with asyncio.timeout(interval_s):
                await stopped()
            break
        except TimeoutError:
            log.info("%s: stats %s", handler.name, json.dumps(handler.stats, sort_keys=True))
    log.info("%s: stats %s", handler.name, json.dumps(handler.stats, sort_keys=True))


async def run_aggregator(
    settings: AggregatorSettings,
    scenario: ScenarioSettings,
    broker: BrokerSettings,
    runtime: RuntimeSettings,
) -> None:
    """Run one aggregator instance until SIGTERM / SIGINT, then drain and stop."""
    handler = build_handler(settings, scenario, broker)
    service = build_runtime(handler, settings, broker, runtime)
    async with service:
        with stop_on_signals(service.stop):
            async with asyncio.TaskGroup() as group:
                group.create_task(
                    log_stats(handler, runtime.metrics_interval_s, service.wait),
                    name=f"{NAME}:stats",
                )
                await service.wait()


DESCRIPTION = (
    "Per-part streaming aggregation of device updates: round markers open a part's round, "
    "every update is acked with its verdict, a part closes at quorum or deadline + grace and "
    "publishes its new version; per-part atomic checkpoints shared by the instances."
)


def main(argv: Sequence[str]) -> int:
    """Entry point of `fedmoe service aggregator`."""
    return service_main(
        argv,
        name=NAME,
        description=DESCRIPTION,
        settings=(AggregatorSettings, ScenarioSettings, BrokerSettings, RuntimeSettings),
        run=run_aggregator,
    )
