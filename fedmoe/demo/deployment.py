"""`deployment`: embedded brokers and every service, without the fleet (what a replay drives).

Tests and benchmarks only: MQTT runs anonymous (`mqtt_insecure`), see the comment below.

The demo's own pieces (`fedmoe.commands.demo`: brokers on free ports, a fresh namespace and MQTT
root, the services as child processes, the run observer); the caller brings the devices: a
`fedmoe replay --follow-rounds` or a `fedmoe fleet` of its own.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from brokers.local import LocalBrokers
from brokers.settings import BrokerSettings, LocalBrokerSettings
from fedmoe.demo.observer import observer_runtime
from fedmoe.demo.processes import ProcessGroup, child_env, fedmoe_argv
from fedmoe.demo.progress import RunProgress
from fedmoe.scenario import ScenarioSettings
from fedmoe.settings import to_env


@dataclass
class Deployment:
    """A running deployment: where its brokers are, its children, what the observer saw."""

    broker: BrokerSettings
    group: ProcessGroup
    env: dict[str, str]
    progress: RunProgress


def _prepare(out: Path) -> Path:
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.asynccontextmanager
async def deployment(
    out: Path,
    scenario: ScenarioSettings,
    environ: Mapping[str, str],
    *,
    strategy: str = "fitness",
    rounds: int = 30,
    aggregators: int = 2,
) -> AsyncIterator[Deployment]:
    """Brokers + gateway, profiler, load monitor, evaluator, aggregators and matcher."""
    from fedmoe.commands.demo import SERVICES, DemoSettings, service_env

    out = _prepare(out)
    namespace = f"live-{uuid.uuid4().hex[:8]}"
    demo = DemoSettings(rounds=rounds, strategy=strategy, out=out, aggregators=aggregators)
    # Anonymous MQTT: the replay of `--follow-rounds` reads the live rounds and assignments,
    # which the `replayer` role may not (brokers/registry.py); for tests and benchmarks only.
    local = LocalBrokerSettings(
        run_dir=str(out / "brokers"),
        namespace=namespace,
        mqtt_root=namespace,
        mqtt_insecure=True,
    )
    async with LocalBrokers(local) as brokers:
        broker = brokers.broker_settings(namespace, mqtt_root=namespace)
        env = child_env(environ, to_env(broker), to_env(scenario), service_env(demo, out))
        runtime, progress, _ = observer_runtime(broker)
        async with ProcessGroup(out / "logs") as group, runtime:
            for name in SERVICES:
                await group.start(name, fedmoe_argv("service", name), env)
            for i in range(1, aggregators + 1):
                await group.start(
                    f"aggregator-{i}",
                    fedmoe_argv("service", "aggregator"),
                    {**env, "FEDMOE_AGGREGATOR_INSTANCE_ID": f"aggregator-{i}"},
                )
            await group.start("matcher", fedmoe_argv("service", "matcher"), env)
            yield Deployment(broker, group, env, progress)
