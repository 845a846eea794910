"""`fedmoe soak`: the whole system under a fault plan, with live invariants and a report.

    fedmoe soak --plan docker/soak/chaos.yaml --devices 200 --minutes 10 --out DIR

Brokers, every service and the fleet as in `fedmoe demo`, under a supervisor that restarts
what exits; the plan's events (kills, pauses, a broker restart, device drops, slowdowns,
joins and leaves) fire at their times while the invariants are judged live. Writes
`DIR/report.json` and `DIR/report.png`; exits 1 when any invariant was violated, 2 on a bad
plan or settings. See `docs/soak.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from fedmoe.errors import FedMoEError, SettingsError
from fedmoe.scenario import ScenarioSettings
from fedmoe.settings import add_arguments, from_args
from fedmoe.soak.plan import load_plan
from fedmoe.soak.run import Soak, SoakSettings


def build_parser() -> argparse.ArgumentParser:
    """`fedmoe soak` flags: the soak's and the scenario's settings."""
    parser = argparse.ArgumentParser(
        prog="fedmoe soak",
        description="Every service and a simulated fleet under a fault plan, supervised, with "
        "invariants checked while it runs; writes report.json and report.png.",
    )
    add_arguments(parser, SoakSettings)
    add_arguments(parser, ScenarioSettings)
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of `fedmoe soak`; reads `os.environ` once."""
    args = build_parser().parse_args(list(argv))
    try:
        soak = from_args(SoakSettings, args, os.environ)
        scenario = from_args(ScenarioSettings, args, os.environ)
        plan = load_plan(soak.plan)  # refused before anything starts
        run = Soak(scenario, soak, plan, os.environ)
    except SettingsError as exc:
        print(f"fedmoe soak: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        report = asyncio.run(run.run())
    except FedMoEError as exc:
        print(f"fedmoe soak: failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"fedmoe soak: {report['rounds_completed']} rounds, {len(report['events'])} events, "
        f"restarts {report['restarts']}, updates sent {report['updates_sent']} / acked "
        f"{report['updates_acked']} / applied {report['updates_applied']}, "
        f"{report['violation_count']} violations; report in {soak.out / 'report.json'}",
        flush=True,
    )
    return 1 if report["violation_count"] else 0
