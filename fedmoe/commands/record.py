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
from recording.fedscale import load_fedscale, to_records
from recording.recorder import record
from recording.settings import RecordSettings, split
from recording.writer import RecordingWriter

log = logging.getLogger("fedmoe.record")


def build_parser() -> argparse.ArgumentParser:
    """Every flag of `fedmoe record`."""
    parser = argparse.ArgumentParser(
        prog="fedmoe record",
        description="Record a deployment's MQTT and Kafka traffic to a Parquet file.",
    )
    parser.add_argument("file", type=Path, help="the recording to write (.parquet)")
    parser.add_argument("--duration", dest="duration_s", default=None, help="alias of --duration-s")
    parser.add_argument(
        "--import-fedscale",
        type=Path,
        default=None,
        metavar="TRACE",
        help="no brokers: write what a FedScale trace's fleet (JSON, recording/fedscale.py) "
        "would have announced, round by round",
    )
    parser.add_argument("--trace-rounds", type=int, default=48, help="import: rounds to write")
    parser.add_argument(
        "--trace-round-s", type=float, default=600.0, help="import: trace seconds per round"
    )
    for cls in (RecordSettings, BrokerSettings, ScenarioSettings):
        add_arguments(parser, cls)
    return parser


def import_fedscale(
    args: argparse.Namespace, broker: BrokerSettings, scenario: ScenarioSettings
) -> int:
    """A FedScale trace as a recording (no brokers)."""
    clients = load_fedscale(args.import_fedscale)
    records = to_records(
        clients, rounds=args.trace_rounds, round_s=args.trace_round_s, root=broker.mqtt_root
    )
    info = {
        "namespace": broker.namespace,
        "mqtt_root": broker.mqtt_root,
        "imported_from": str(args.import_fedscale),
        "trace_round_s": args.trace_round_s,
        "scenario": {**to_env(scenario), "FEDMOE_SCENARIO_DEVICES": str(len(clients))},
    }
    with RecordingWriter(args.file, info=info) as writer:
        for record in records:
            writer.append(record)
    print(
        json.dumps({"recording": str(args.file), "records": len(records), "clients": len(clients)}),
        flush=True,
    )
    return 0


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
    if args.import_fedscale is not None:
        try:
            return import_fedscale(args, broker, scenario)
        except FedMoEError as exc:
            print(f"fedmoe record: {exc}", file=sys.stderr)
            return 1
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
