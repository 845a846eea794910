"""`fedmoe replay FILE`: publish a recording back into a deployment, or fold it offline.

    fedmoe replay run.parquet --speed 10 --rewrite          # into the brokers of FEDMOE_*
    fedmoe replay run.parquet --speed 1 --follow-rounds     # round-synchronous
    fedmoe replay run.parquet --offline --out whatif        # no brokers: every strategy

Timing, filters and rewriting: `recording.replayer`; the offline what-if: `recording.whatif`.
A FedScale trace (`.json`) is converted on the fly (`recording.fedscale`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from brokers.settings import BrokerSettings
from fedmoe.errors import FedMoEError, SettingsError
from fedmoe.scenario import ScenarioSettings
from fedmoe.settings import add_arguments, from_args, load_settings
from moe.matching import STRATEGY_NAMES
from moe.parts import SHARED, expert_part_id
from moe.scenario import build_scenario
from recording.reader import open_recording
from recording.replayer import Replayer, renamer_for, selected
from recording.settings import ReplaySettings, split
from recording.whatif import what_if, write_summary
from services.matcher.planning import MatchingContext

log = logging.getLogger("fedmoe.replay")


def build_parser() -> argparse.ArgumentParser:
    """Every flag of `fedmoe replay`."""
    parser = argparse.ArgumentParser(
        prog="fedmoe replay",
        description="Replay a recording into a deployment (timed or round-synchronous), or "
        "fold it offline through every matching strategy.",
    )
    parser.add_argument("file", type=Path, help="the recording (.parquet)")
    parser.add_argument("--offline", action="store_true", help="no brokers: the what-if")
    parser.add_argument("--out", type=Path, default=Path("whatif"), help="offline: output dir")
    parser.add_argument(
        "--strategies",
        default=",".join(STRATEGY_NAMES),
        help="offline: strategies to compare (comma list; default every one)",
    )
    parser.add_argument("--from", dest="from_s", default=None, help="alias of --from-s")
    parser.add_argument("--to", dest="to_s", default=None, help="alias of --to-s")
    # No scenario flags: `--devices` is the replay's filter here. The what-if takes the
    # scenario the recording names (FEDMOE_SCENARIO_* fill in what it does not).
    for cls in (ReplaySettings, BrokerSettings):
        add_arguments(parser, cls)
    return parser


def offline(args: argparse.Namespace) -> int:
    """The what-if: `args.out/summary.json` and the plot."""
    recording = open_recording(args.file)
    recorded = recording.info.get("scenario", {})
    environ = {**os.environ, **(recorded if isinstance(recorded, dict) else {})}
    scenario_settings = load_settings(ScenarioSettings, environ)
    scenario = build_scenario(scenario_settings.config())
    strategies = split(args.strategies)
    unknown = [s for s in strategies if s not in STRATEGY_NAMES]
    if unknown:
        raise SettingsError(f"--strategies: unknown {unknown}; choose from {STRATEGY_NAMES}")
    sizes = scenario.part_bytes
    runs = what_if(
        list(recording.records()),
        MatchingContext.from_scenario(scenario),
        strategies,
        (float(sizes[SHARED]), float(sizes[expert_part_id(0)])),
    )
    summary = write_summary(runs, args.out, source=str(args.file), info=recording.info)
    for name, figures in summary["strategies"].items():
        print(
            f"{name:>22}: rounds {figures['rounds']}, load CV {figures['load_cv_mean']}, "
            f"assigned/round {figures['assigned_per_round']}, predicted late "
            f"{figures['predicted_late']}, agreement {figures['agreement_with_recorded']}"
        )
    print(f"fedmoe replay: what-if in {args.out / 'summary.json'}", flush=True)
    return 0


def online(args: argparse.Namespace) -> int:
    """Publish the recording into the brokers."""
    settings = from_args(ReplaySettings, args, os.environ)
    broker = from_args(BrokerSettings, args, os.environ)
    recording = open_recording(args.file)
    records = selected(recording, settings)
    if not records:
        print("fedmoe replay: no record passes the filters", file=sys.stderr)
        return 1
    replayer = Replayer(broker, settings, records, renamer_for(recording, records, broker))
    report = asyncio.run(replayer.run())
    report["recording"] = str(args.file)
    text = json.dumps(report, sort_keys=True)
    if settings.report:
        Path(settings.report).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(text, flush=True)
    return 0 if report.get("failed", 0) == 0 else 1


def main(argv: Sequence[str]) -> int:
    """Entry point: 0 when done, 1 on an error, 2 on bad settings."""
    args = build_parser().parse_args(list(argv))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        return offline(args) if args.offline else online(args)
    except SettingsError as exc:
        print(f"fedmoe replay: {exc}", file=sys.stderr)
        return 2
    except FedMoEError as exc:
        print(f"fedmoe replay: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
