"""`fedmoe fleet [--first I --count N] [--stats-file PATH] [flags]`: a simulated device fleet.

With `--fleet-processes K` the devices are sharded over K child processes (`clients.shards`).

Runs devices [I, I + N) of the scenario over MQTT (see `clients.fleet`) until SIGTERM / SIGINT
or until RoundClosed of `--stop-after-round` was heard, then disconnects them cleanly and
writes the counters to `--stats-file`. Settings: `FEDMOE_FLEET_*`, the brokers' `FEDMOE_*`
and the run's `FEDMOE_SCENARIO_*` (the same the services read), each also a flag.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from brokers.settings import BrokerSettings
from clients.control import ControlSettings, run_controlled_fleet
from clients.fleet import run_fleet
from clients.settings import FleetSettings
from clients.shards import ShardSettings, run_sharded
from fedmoe.errors import FedMoEError, SettingsError
from fedmoe.scenario import ScenarioSettings
from fedmoe.settings import add_arguments, from_args, to_env

log = logging.getLogger("fedmoe.fleet")

_SETTINGS = (FleetSettings, BrokerSettings, ScenarioSettings, ControlSettings, ShardSettings)


def build_parser() -> argparse.ArgumentParser:
    """Every flag of `fedmoe fleet` (one per setting; the help names its env variable)."""
    parser = argparse.ArgumentParser(
        prog="fedmoe fleet",
        description="Simulated devices over MQTT: telemetry, local training, updates with "
        "end-to-end acks, connection drops.",
    )
    parser.add_argument(
        "--log-level", default=None, help="logging level (env FEDMOE_LOG_LEVEL; default INFO)"
    )
    for cls in _SETTINGS:
        add_arguments(parser, cls)
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of `fedmoe fleet`: 0 after a clean stop, 1 on an error, 2 on bad settings."""
    args = build_parser().parse_args(list(argv))
    environ = os.environ
    try:
        fleet = from_args(FleetSettings, args, environ)
        broker = from_args(BrokerSettings, args, environ)
        scenario = from_args(ScenarioSettings, args, environ)
        control = from_args(ControlSettings, args, environ)
        shards = from_args(ShardSettings, args, environ)
        devices = fleet.device_range(scenario.devices)
    except SettingsError as exc:
        print(f"fedmoe fleet: {exc}", file=sys.stderr)
        return 2
    level = (args.log_level or environ.get("FEDMOE_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if shards.fleet_processes > 1:  # the parent of the shards (`clients.shards`)
        env = {**environ}
        for settings in (fleet, broker, scenario, control):
            env.update(to_env(settings))
        return asyncio.run(
            run_sharded(
                env,
                devices,
                shards.fleet_processes,
                stats_file=fleet.stats_file,
                journal_file=control.journal_file,
            )
        )
    try:
        if control.active:  # under a soak (`clients.control`)
            asyncio.run(run_controlled_fleet(fleet, control, broker, scenario))
        else:
            asyncio.run(run_fleet(fleet, broker, scenario))
    except FedMoEError as exc:
        log.error("fleet: stopped on error: %s: %s", type(exc).__name__, exc)
        return 1
    return 0
