"""`fedmoe record FILE`: tap a running deployment into a recording (Apache Parquet).

    fedmoe record run.parquet [--mqtt telemetry,status,update,assignment] [--kafka rounds]
                              [--duration S] [broker flags]

Records the device-side MQTT topics (and the optional ones named), and the Kafka topics named,
until SIGINT / SIGTERM or `--duration`, with a progress line; see `recording.recorder` for what
a record holds and `docs/replay.md` for the format.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from brokers.settings import BrokerSettings
from fedmoe.errors import FedMoEError, SettingsError
from fedmoe.scenario import ScenarioSettings
from fedmoe.settings import add_arguments, from_args, to_env
from recording.recorder import record
from recording.settings import RecordSettings, split

log = logging.getLogger("fedmoe.record")


def build_parser() -> argparse.ArgumentParser:
    """Every flag of `fedmoe record`."""
    parser = argparse.ArgumentParser(
        prog="fedmoe record",
        description="Record a deployment's MQTT and Kafka traffic to a Parquet file.",
    )
    parser.add_argument("file", type=Path, help="the recording to write (.parquet)")
    parser.add_argument("--duration", dest="duration_s", default=None, help="alias of --duration-s")
    for cls in (RecordSettings, BrokerSettings, ScenarioSettings):
        add_arguments(parser, cls)
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point: 0 after a clean stop, 1 on an error, 2 on bad settings."""
    args = build_parser().parse_args(list(argv))
    try:
        settings = from_args(RecordSettings, args, os.environ)
        broker = from_args(BrokerSettings, args, os.environ)
        scenario = from_args(ScenarioSettings, args, os.environ)
    except SettingsError as exc:
        print(f"fedmoe record: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    info = {
        "namespace": broker.namespace,
        "mqtt_root": broker.mqtt_root,
        "mqtt": list(split(settings.mqtt)),
        "kafka": list(split(settings.kafka)),
        "scenario": to_env(scenario),
        "started_unix": time.time(),
    }
    try:
        totals = asyncio.run(record(broker, settings, args.file, info=info))
    except FedMoEError as exc:
        print(f"fedmoe record: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"recording": str(args.file), **totals}), flush=True)
    return 0
