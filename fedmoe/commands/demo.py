"""`fedmoe demo`: embedded brokers, every service as its own process, a simulated fleet.

    fedmoe demo [--devices N] [--rounds R] [--strategy S] [--seed K] [--out DIR] ...

Starts Tansu and Mosquitto on free loopback ports, then `fedmoe service gateway`, `profiler`,
`load-monitor`, `aggregator` (×`--aggregators`, sharing the parts through their consumer
group), `evaluator`, `matcher` and `fedmoe fleet`, each a separate OS process with its log in
`DIR/logs/`. It watches the bus (rounds, metrics, acks, dead letters) with a progress line per
change, stops after round R was evaluated, stops every process (none is left behind) and
writes `DIR/summary.json` and `DIR/accuracy.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brokers.local import INSECURE_WARNING, LocalBrokers
from brokers.settings import LocalBrokerSettings
from clients.settings import FleetSettings
from fedmoe.demo.accounts import provision_demo
from fedmoe.demo.observer import observer_runtime
from fedmoe.demo.processes import ProcessGroup, child_env, fedmoe_argv
from fedmoe.demo.progress import RunProgress
from fedmoe.errors import FedMoEError, SettingsError
from fedmoe.scenario import ScenarioSettings
from fedmoe.settings import add_arguments, from_args, load_settings, setting, to_env
from moe.matching import STRATEGY_NAMES
from services.aggregator.settings import AggregatorSettings
from services.load_monitor.settings import LoadMonitorSettings
from services.matcher.settings import MatcherSettings
from services.runtime import RuntimeSettings
from services.runtime.http import metrics_port

log = logging.getLogger(__name__)

SERVICES = ("gateway", "profiler", "load-monitor", "evaluator")  # plus aggregators, matcher


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs and where it writes (`FEDMOE_DEMO_*`)."""

    rounds: int = setting("FEDMOE_DEMO_ROUNDS", 30, "training rounds to run")
    strategy: str = setting(
        "FEDMOE_DEMO_STRATEGY",
        "fitness",
        f"matching strategy, one of: {', '.join(STRATEGY_NAMES)}",
    )
    out: Path = setting("FEDMOE_DEMO_OUT", Path("demo-out"), "output directory")
    aggregators: int = setting("FEDMOE_DEMO_AGGREGATORS", 2, "aggregator processes")
    fleet_processes: int = setting(
        "FEDMOE_DEMO_FLEET_PROCESSES", 1, "fleet processes the devices are sharded over"
    )
    timeout_s: float = setting("FEDMOE_DEMO_TIMEOUT_S", 900.0, "give up after this long")
    insecure: bool = setting(
        "FEDMOE_DEMO_INSECURE",
        False,
        "DEBUGGING ONLY: MQTT without authentication or ACLs (anonymous clients do anything)",
    )
    tls: bool = setting(
        "FEDMOE_DEMO_TLS", False, "MQTT over TLS (mqtts://) with a CA made for the run"
    )
    record: str = setting(
        "FEDMOE_DEMO_RECORD",
        "",
        "record the whole run to this Parquet file (fedmoe record: device topics, "
        "assignments, acks, rounds; empty = no recording)",
    )

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise SettingsError("FEDMOE_DEMO_ROUNDS must be >= 1")
        if self.strategy not in STRATEGY_NAMES:
            raise SettingsError(f"FEDMOE_DEMO_STRATEGY: {self.strategy!r} not in {STRATEGY_NAMES}")
        if self.aggregators < 1:
            raise SettingsError("FEDMOE_DEMO_AGGREGATORS must be >= 1")
        if self.fleet_processes < 1:
            raise SettingsError("FEDMOE_DEMO_FLEET_PROCESSES must be >= 1")
        if not self.timeout_s > 0:
            raise SettingsError("FEDMOE_DEMO_TIMEOUT_S must be > 0")


def service_env(demo: DemoSettings, out: Path) -> dict[str, str]:
    """Settings of the matcher, the aggregators and the load monitor for this run."""
    checkpoints = out / "checkpoints"
    return {
        **to_env(MatcherSettings(strategy=demo.strategy, max_rounds=demo.rounds)),
        **to_env(AggregatorSettings(checkpoint_dir=checkpoints / "aggregator")),
        **to_env(LoadMonitorSettings(checkpoint_dir=checkpoints / "load-monitor")),
        # Services log their metrics line often enough to read progress from the logs.
        **to_env(RuntimeSettings(metrics_interval_s=10.0)),
    }


async def _start_all(
    group: ProcessGroup,
    demo: DemoSettings,
    env: Mapping[str, str],
    out: Path,
    accounts: Mapping[str, Mapping[str, str]],
) -> dict[str, int]:
    """Start every process, each MQTT speaker with its own account (`accounts`: process name
    → its credentials' environment); each service's metrics port (its own, free)."""
    ports: dict[str, int] = {}

    def own_port(name: str) -> dict[str, str]:
        ports[name] = metrics_port()
        return {**env, **accounts.get(name, {}), "FEDMOE_METRICS_PORT": str(ports[name])}

    if demo.record:
        # First, so it hears the fleet's first announcements; Kafka `rounds` from the start.
        recorder_env = {**env, **accounts.get("recorder", {})}
        await group.start("recorder", record_argv(Path(demo.record)), recorder_env)
    for name in SERVICES:
        await group.start(name, fedmoe_argv("service", name), own_port(name))
    for i in range(1, demo.aggregators + 1):
        await group.start(
            f"aggregator-{i}",
            fedmoe_argv("service", "aggregator"),
            {**own_port(f"aggregator-{i}"), "FEDMOE_AGGREGATOR_INSTANCE_ID": f"aggregator-{i}"},
        )
    # The matcher starts the round clock; the fleet joins whenever it is up (retained state).
    await group.start("matcher", fedmoe_argv("service", "matcher"), own_port("matcher"))
    stats = str(out / "fleet-stats.json")
    await group.start(
        "fleet",
        fedmoe_argv("fleet", "--stats-file", stats, "--fleet-processes", str(demo.fleet_processes)),
        {**env, **accounts.get("fleet", {})},
    )
    return ports


async def _watch(
    group: ProcessGroup,
    progress: RunProgress,
    changed: asyncio.Event,
    rounds: int,
    deadline: float,
) -> bool:
    """Show progress until round `rounds` is evaluated (True) or the time is up (False).

    On a terminal one line is rewritten in place on every change; otherwise (logs, CI) a line
    is printed per evaluated round.
    """
    tty = sys.stdout.isatty()
    shown: object = None
    try:
        while time.monotonic() < deadline:
            group.check_running()
            line = progress.line(rounds)
            key = line if tty else (progress.rounds_completed, len(progress.accuracy))
            if key != shown:
                print(f"\r{line}" if tty else line, end="" if tty else "\n", flush=True)
                shown = key
            if rounds in progress.accuracy and progress.rounds_completed >= rounds:
                return True
            changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await changed.wait()
        return False
    finally:
        if tty:
            print(flush=True)


async def run_demo(
    scenario: ScenarioSettings, demo: DemoSettings, environ: Mapping[str, str]
) -> dict[str, Any]:
    """Run the whole demo; returns the summary (also written to `out/summary.json`)."""
    out = demo.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # A run starts from empty brokers (no persisted sessions or retained messages of old runs)
    # and reports only its own fleet's counters.
    shutil.rmtree(out / "brokers", ignore_errors=True)
    (out / "fleet-stats.json").unlink(missing_ok=True)
    fleet_drain_s = load_settings(FleetSettings, environ).drain_s
    namespace = f"demo-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    # A fresh MQTT root too: Mosquitto keeps retained rounds and models across runs. The
    # registry (RUN_DIR/registry) and the TLS files are made for this run.
    brokers_settings = LocalBrokerSettings(
        run_dir=str(out / "brokers"),
        namespace=namespace,
        mqtt_root=namespace,
        mqtt_insecure=demo.insecure,
        mqtt_tls=demo.tls,
    )
    security = "INSECURE: anonymous MQTT" if demo.insecure else "per-device MQTT accounts"
    print(
        f"fedmoe demo: {demo.rounds} rounds, {scenario.devices} devices, "
        f"{scenario.model} model, strategy {demo.strategy}, seed {scenario.seed}; {security}"
        f"{', TLS' if demo.tls else ''}; logs in {out / 'logs'}",
        flush=True,
    )
    if demo.insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
    async with LocalBrokers(brokers_settings) as brokers:
        broker = brokers.broker_settings(namespace, mqtt_root=namespace)
        accounts: dict[str, Mapping[str, str]] = {}
        if brokers.registry is not None and brokers.mosquitto is not None:
            accounts = provision_demo(
                brokers.registry,
                out / "secrets",
                devices=scenario.devices,
                record=bool(demo.record),
            )
            await brokers.mosquitto.reload()
        env = child_env(environ, to_env(broker), to_env(scenario), service_env(demo, out))
        runtime, progress, changed = observer_runtime(broker)
        async with ProcessGroup(out / "logs") as group, runtime:
            ports = await _start_all(group, demo, env, out, accounts)
            pids = group.pids
            finished = await _watch(group, progress, changed, demo.rounds, started + demo.timeout_s)
            # The fleet first: it finishes uploads under way (its drain) and writes its
            # counters while the services still answer.
            await group.stop("fleet", timeout_s=fleet_drain_s + 15.0)
            if demo.record:  # SIGTERM: it writes its last row group and the footer
                await group.stop("recorder", timeout_s=30.0)
    fleet = _read_json(out / "fleet-stats.json").get("totals", {})
    summary = {
        "finished": finished,
        "strategy": demo.strategy,
        "rounds": demo.rounds,
        "scenario": to_env(scenario),
        **progress.summary(demo.rounds),
        "updates_sent": fleet.get("updates_sent"),
        "updates_acked": fleet.get("updates_acked"),
        "fleet": fleet,
        "bytes_per_trained_round": _bytes_per_trained_round(fleet),
        "services": pids,
        "metrics_ports": ports,  # each service's /metrics, /healthz, /readyz while it ran
        "wall_seconds": round(time.monotonic() - started, 1),
        # How MQTT ran: per-account auth and ACLs (off only with --insecure), TLS.
        "mqtt_security": {
            "auth": not demo.insecure,
            "tls": demo.tls,
            "accounts": sorted(accounts),
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    plot_accuracy(summary["accuracy_per_round"], out / "accuracy.png", demo.strategy)
    return summary


def record_argv(path: Path) -> list[str]:
    """`fedmoe record` of a whole demo run: what replay and the what-if need."""
    return fedmoe_argv(
        "record",
        str(path.resolve()),
        "--mqtt",
        "telemetry,status,update,assignment,ack,round",
        "--kafka",
        "rounds",
        "--kafka-from-beginning",
        "--progress-s",
        "30",
    )


def _bytes_per_trained_round(fleet: dict[str, Any]) -> dict[str, float] | None:
    """What a device moved per round it trained in: its updates up, model parts down (the
    parts it was assigned, and `shared`, which every device hears every round)."""
    trained = fleet.get("rounds_trained") or 0
    if not trained:
        return None
    down = fleet.get("bytes_received", {}).get("model", 0)
    return {
        "update_up": round(fleet.get("update_bytes_sent", 0) / trained),
        "model_down": round(down / trained),
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def plot_accuracy(accuracy: Sequence[float | None], path: Path, label: str) -> None:
    """Accuracy per round of the bus run."""
    from matplotlib.figure import Figure  # the OO API: no pyplot state, no display

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    points = [(r, a) for r, a in enumerate(accuracy, start=1) if a is not None]
    ax.plot([r for r, _ in points], [a for _, a in points], marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title("fedmoe demo: accuracy over the bus")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    """`fedmoe demo` flags: the demo's and the scenario's settings."""
    parser = argparse.ArgumentParser(
        prog="fedmoe demo",
        description="Federated MoE end to end on embedded brokers: every service as its own "
        "process and a simulated fleet over MQTT.",
    )
    add_arguments(parser, DemoSettings)
    add_arguments(parser, ScenarioSettings)
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of `fedmoe demo`; reads `os.environ` once."""
    args = build_parser().parse_args(list(argv))
    try:
        demo = from_args(DemoSettings, args, os.environ)
        scenario = from_args(ScenarioSettings, args, os.environ)
    except SettingsError as exc:
        print(f"fedmoe demo: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        summary = asyncio.run(run_demo(scenario, demo, os.environ))
    except FedMoEError as exc:
        print(f"fedmoe demo: failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"fedmoe demo: {summary['rounds_completed']} rounds, final accuracy "
        f"{summary['final_accuracy']}, updates applied {summary['updates_applied']} / acked "
        f"{summary['updates_acked']}, dead letters {summary['dead_letters']}; "
        f"summary in {demo.out / 'summary.json'}",
        flush=True,
    )
    return 0 if summary["finished"] else 1
