"""`run_soak`: brokers, every service and the fleet as `fedmoe demo` starts them, under the
supervisor, with the plan driven, the invariants judged live and the report written.

    brokers (LocalBrokers) ─ services + fleet shards (Supervisor over the demo's ProcessGroup)
       │                         ▲ kill / pause / join           ▲ drop / slow / leave
       │                         └──────────── Driver (the plan) ┘ (command file)
       └─ watchers: Kafka (BusWatch), journals, /metrics, $SYS ─► Invariants ─► report
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brokers.local import LocalBrokers
from brokers.settings import LocalBrokerSettings
from clients.control import shard_ranges
from clients.settings import FleetSettings
from fedmoe.demo.accounts import provision_demo
from fedmoe.demo.processes import ProcessGroup, child_env, fedmoe_argv
from fedmoe.errors import SettingsError
from fedmoe.scenario import ScenarioSettings
from fedmoe.settings import load_settings, setting, to_env
from fedmoe.soak.driver import Driver
from fedmoe.soak.invariants import Bounds, Invariants, RoundWithinDeadline, RssBounded
from fedmoe.soak.plan import SERVICES, Plan
from fedmoe.soak.report import Timeline, write_report
from fedmoe.soak.supervisor import ProcessSpec, RestartPolicy, Supervisor
from fedmoe.soak.watch import BusWatch, JournalTail, Scraper, SysWatch
from moe.matching import STRATEGY_NAMES
from schemas.topics import Topic
from services.aggregator.settings import AggregatorSettings
from services.load_monitor.settings import LoadMonitorSettings
from services.matcher.settings import MatcherSettings
from services.runtime import RuntimeSettings, ServiceRuntime
from services.runtime.http import metrics_port

log = logging.getLogger(__name__)

_CHECK_EVERY_S = 2.0
_PROGRESS_EVERY_S = 30.0


@dataclass(frozen=True)
class SoakSettings:
    """What the soak runs, how long, where it writes and what it judges by (`FEDMOE_SOAK_*`)."""

    plan: Path = setting("FEDMOE_SOAK_PLAN", Path("docker/soak/smoke.yaml"), "the plan (YAML)")
    minutes: float = setting("FEDMOE_SOAK_MINUTES", 10.0, "how long the soak runs, minutes")
    out: Path = setting("FEDMOE_SOAK_OUT", Path("soak-out"), "output directory")
    strategy: str = setting(
        "FEDMOE_SOAK_STRATEGY", "fitness", f"matching strategy: {', '.join(STRATEGY_NAMES)}"
    )
    aggregators: int = setting("FEDMOE_SOAK_AGGREGATORS", 2, "aggregator processes")
    fleet_processes: int = setting(
        "FEDMOE_SOAK_FLEET_PROCESSES", 1, "fleet processes the devices are sharded over"
    )
    scrape_interval_s: float = setting(
        "FEDMOE_SOAK_SCRAPE_INTERVAL_S", 5.0, "how often every /metrics is read, seconds"
    )
    restart_initial_s: float = setting(
        "FEDMOE_SOAK_RESTART_INITIAL_S", 1.0, "first restart backoff (doubles per quick exit)"
    )
    restart_max_s: float = setting("FEDMOE_SOAK_RESTART_MAX_S", 30.0, "restart backoff cap")
    restart_reset_s: float = setting(
        "FEDMOE_SOAK_RESTART_RESET_S", 60.0, "a run this long ends a crash loop's backoff"
    )
    settle_s: float = setting(
        "FEDMOE_SOAK_SETTLE_S", 60.0, "how long evidence may trail what it proves, seconds"
    )
    round_bound_s: float = setting(
        "FEDMOE_SOAK_ROUND_BOUND_S", 60.0, "a round may stay open this long past its deadline"
    )
    stall_s: float = setting(
        "FEDMOE_SOAK_STALL_S", 180.0, "longest time without a closed round while devices are on"
    )
    max_lag: int = setting("FEDMOE_SOAK_MAX_LAG", 5000, "consumer lag bound, records")
    lag_for_s: float = setting(
        "FEDMOE_SOAK_LAG_FOR_S", 90.0, "how long lag may stay above the bound, seconds"
    )
    rss_warmup_s: float = setting(
        "FEDMOE_SOAK_RSS_WARMUP_S", 120.0, "RSS samples left out after each process start"
    )
    rss_min_span_s: float = setting(
        "FEDMOE_SOAK_RSS_MIN_SPAN_S",
        300.0,
        "RSS is judged over the process incarnations that lived this long past their warm-up",
    )
    rss_mb_per_hour: float = setting(
        "FEDMOE_SOAK_RSS_MB_PER_HOUR", 200.0, "largest RSS growth allowed, MB per hour"
    )

    def __post_init__(self) -> None:
        if not self.minutes > 0:
            raise SettingsError("FEDMOE_SOAK_MINUTES must be > 0")
        if self.strategy not in STRATEGY_NAMES:
            raise SettingsError(f"FEDMOE_SOAK_STRATEGY: {self.strategy!r} not in {STRATEGY_NAMES}")
        if self.aggregators < 1 or self.fleet_processes < 1:
            raise SettingsError("FEDMOE_SOAK_AGGREGATORS and _FLEET_PROCESSES must be >= 1")

    @property
    def duration_s(self) -> float:
        return self.minutes * 60.0

    def bounds(self) -> Bounds:
        return Bounds(
            settle_s=self.settle_s,
            round_bound_s=self.round_bound_s,
            stall_s=self.stall_s,
            max_lag=self.max_lag,
            lag_for_s=self.lag_for_s,
            rss_warmup_s=self.rss_warmup_s,
            rss_min_span_s=self.rss_min_span_s,
            rss_mb_per_hour=self.rss_mb_per_hour,
        )

    def policy(self) -> RestartPolicy:
        return RestartPolicy(self.restart_initial_s, self.restart_max_s, self.restart_reset_s)


def service_env(soak: SoakSettings, out: Path) -> dict[str, str]:
    """The matcher (no round limit), aggregators and load monitor of this run."""
    checkpoints = out / "checkpoints"
    return {
        **to_env(MatcherSettings(strategy=soak.strategy, max_rounds=0)),
        **to_env(AggregatorSettings(checkpoint_dir=checkpoints / "aggregator")),
        **to_env(LoadMonitorSettings(checkpoint_dir=checkpoints / "load-monitor")),
        **to_env(RuntimeSettings(metrics_interval_s=30.0)),
    }


class Soak:
    """One soak run (see the module docstring)."""

    def __init__(
        self,
        scenario: ScenarioSettings,
        soak: SoakSettings,
        plan: Plan,
        environ: Mapping[str, str],
    ) -> None:
        self.scenario = scenario
        self.soak = soak
        self.plan = plan
        self.environ = environ
        self.out = soak.out.resolve()
        joining = plan.devices_joining(soak.duration_s)
        if joining >= scenario.devices:
            raise SettingsError(
                f"the plan joins {joining} devices: the scenario needs more than that "
                f"(--devices {scenario.devices})"
            )
        self.initial = range(0, scenario.devices - joining)
        self.reserve = range(self.initial.stop, scenario.devices)
        self.invariants = Invariants(soak.bounds())
        self.ports: dict[str, int] = {}  # process -> metrics port
        self.fleets: list[str] = []
        self.timeline = Timeline()
        self._fleet_env: dict[str, str] = {}
        self._accounts: Mapping[str, Mapping[str, str]] = {}  # process → its MQTT account

    # -- set-up --------------------------------------------------------------------------------

    def _prepare_out(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in ("brokers", "journal", "fleet-stats", "checkpoints", "logs"):
            shutil.rmtree(self.out / stale, ignore_errors=True)
        for stale in ("control.jsonl", "report.json", "report.png"):
            (self.out / stale).unlink(missing_ok=True)
        (self.out / "journal").mkdir()
        (self.out / "fleet-stats").mkdir()

    async def _start_services(self, sup: Supervisor, env: Mapping[str, str]) -> None:
        names = [(s, s) for s in ("gateway", "profiler", "load-monitor", "evaluator")]
        names += [(f"aggregator-{i}", "aggregator") for i in range(1, self.soak.aggregators + 1)]
        names.append(("matcher", "matcher"))  # last: it starts the round clock
        for name, service in names:
            port = metrics_port()
            self.ports[name] = port
            penv = {**env, **self._accounts.get(service, {}), "FEDMOE_METRICS_PORT": str(port)}
            if service == "aggregator":
                penv["FEDMOE_AGGREGATOR_INSTANCE_ID"] = name
            await sup.start(ProcessSpec(name, service, fedmoe_argv("service", service), penv))

    async def _start_fleet(self, sup: Supervisor, name: str, devices: range) -> str:
        env = {
            **self._fleet_env,
            "FEDMOE_FLEET_PROCESSES": "1",  # the soak shards (and supervises) itself
            "FEDMOE_FLEET_FIRST": str(devices.start),
            "FEDMOE_FLEET_COUNT": str(len(devices)),
            "FEDMOE_FLEET_STATS_FILE": str(self.out / "fleet-stats" / f"{name}.json"),
            "FEDMOE_FLEET_JOURNAL_FILE": str(self.out / "journal" / f"{name}.jsonl"),
            "FEDMOE_FLEET_CONTROL_FILE": str(self.out / "control.jsonl"),
        }
        await sup.start(ProcessSpec(name, "fleet", fedmoe_argv("fleet"), env))
        self.fleets.append(name)
        return name

    # -- the run -------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Run the soak; the report (also written to `out/report.json`)."""
        self._prepare_out()
        soak, scenario = self.soak, self.scenario
        namespace = f"soak-{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        # Brokers as the environment configures them (FEDMOE_* of LocalBrokerSettings), in
        # this run's directory and namespace.
        brokers_settings = load_settings(
            LocalBrokerSettings,
            self.environ,
            run_dir=str(self.out / "brokers"),
            namespace=namespace,
            mqtt_root=namespace,  # the registry's ACL is written for the run's MQTT root
        )
        print(
            f"fedmoe soak: plan {soak.plan}, {scenario.devices} devices "
            f"({len(self.reserve)} held back to join) over {soak.fleet_processes} fleet "
            f"process(es), {soak.minutes:g} min, time scale {scenario.time_scale:g}; "
            f"logs in {self.out / 'logs'}",
            flush=True,
        )
        async with LocalBrokers(brokers_settings) as brokers:
            broker = brokers.broker_settings(namespace, mqtt_root=namespace)
            env = child_env(
                self.environ, to_env(broker), to_env(scenario), service_env(soak, self.out)
            )
            # Every MQTT speaker its own account, as in the demo (docs/security.md).
            accounts: dict[str, Mapping[str, str]] = {}
            if brokers.registry is not None and brokers.mosquitto is not None:
                accounts = provision_demo(
                    brokers.registry,
                    self.out / "secrets",
                    devices=scenario.devices,
                    record=False,
                    monitor=True,
                )
                await brokers.mosquitto.reload()
            self._accounts = accounts
            self._fleet_env = {**env, **accounts.get("fleet", {})}
            t0 = time.time()
            emit = self.invariants.feed
            bus = BusWatch(emit, t0)
            journals = JournalTail(emit, t0)
            scraper = Scraper(emit, t0)
            monitor = accounts.get("monitor", {})
            sys_watch = SysWatch(
                dataclasses.replace(
                    broker,
                    mqtt_username=monitor.get("FEDMOE_MQTT_USERNAME", ""),
                    mqtt_password_file=monitor.get("FEDMOE_MQTT_PASSWORD_FILE", ""),
                ),
                emit,
                t0,
            )
            observer = ServiceRuntime(
                broker,
                name="soak-observer",
                handler=bus,
                inputs=[Topic.ROUNDS, Topic.METRICS, Topic.ACKS, Topic.DEAD_LETTER],
                group_id=f"soak-observer-{uuid.uuid4().hex[:8]}",
                settings=RuntimeSettings(
                    auto_offset_reset="earliest", poll_timeout_s=0.2, metrics_interval_s=3600.0
                ),
            )
            policy = soak.policy()
            async with (
                ProcessGroup(self.out / "logs") as group,
                Supervisor(group, policy) as sup,
                observer,
            ):
                await self._start_services(sup, env)
                ranges = shard_ranges(0, len(self.initial), soak.fleet_processes)
                for k, devices in enumerate(ranges, start=1):
                    await self._start_fleet(sup, f"fleet-{k}", devices)
                mosquitto = brokers.mosquitto
                assert mosquitto is not None

                async def join_fleet(devices: range) -> str:
                    return await self._start_fleet(sup, f"fleet-join-{len(self.fleets)}", devices)

                driver = Driver(
                    sup,
                    control_file=self.out / "control.jsonl",
                    active=list(self.initial),
                    reserve=self.reserve,
                    join_fleet=join_fleet,
                    restart_mqtt=mosquitto.restart,
                    rng=random.Random(scenario.seed),
                    t0=t0,
                    service_names=SERVICES,
                )
                stop_watch = asyncio.Event()
                watchers = [
                    asyncio.create_task(sys_watch.run(stop_watch), name="soak:sys"),
                    asyncio.create_task(
                        self._watch(sup, bus, journals, scraper, stop_watch, t0), name="soak:watch"
                    ),
                ]
                try:
                    await self._drive(driver, t0)
                    # The end: no more restarts; the fleet finishes its uploads, then the
                    # watchers catch up before the last judgment.
                    sup.stop()
                    await driver.close()
                    drain_s = load_settings(FleetSettings, env).drain_s
                    await asyncio.gather(
                        *(group.stop(name, timeout_s=drain_s + 15.0) for name in self.fleets)
                    )
                    journals.poll(self._journal_paths())
                    await self._settle(bus)
                finally:
                    stop_watch.set()
                    await asyncio.wait(watchers, timeout=15.0)
                now = time.time() - t0
                journals.poll(self._journal_paths())
                self.invariants.finish(now)
                report = self._report(sup, bus, journals, scraper, sys_watch, driver, started)
        self.timeline.events = driver.records
        self.timeline.accuracy = bus.accuracy
        rounds = self.invariants["round_within_deadline"]
        assert isinstance(rounds, RoundWithinDeadline)
        self.timeline.round_seconds = rounds.durations
        self.timeline.lag = scraper.lag
        self.timeline.rss = scraper.rss
        self.timeline.online = journals.online
        title = (
            f"fedmoe soak: {soak.plan.name}, {scenario.devices} devices, {soak.minutes:g} min "
            f"({report['violation_count']} violations)"
        )
        write_report(self.out, report, self.timeline, title)
        return report

    def _journal_paths(self) -> list[Path]:
        return [self.out / "journal" / f"{name}.jsonl" for name in self.fleets]

    async def _drive(self, driver: Driver, t0: float) -> None:
        """Fire each scheduled action at its time; return at the run's end."""
        for item in self.plan.schedule(self.soak.duration_s):
            delay = t0 + item.t - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await driver.apply(item.event.action)
        rest = t0 + self.soak.duration_s - time.time()
        if rest > 0:
            await asyncio.sleep(rest)

    async def _watch(
        self,
        sup: Supervisor,
        bus: BusWatch,
        journals: JournalTail,
        scraper: Scraper,
        stop: asyncio.Event,
        t0: float,
    ) -> None:
        """Judge every few seconds, scrape every interval, print progress now and then."""
        next_scrape = next_progress = 0.0
        while not stop.is_set():
            now = time.time() - t0
            journals.poll(self._journal_paths())
            if now >= next_scrape:
                next_scrape = now + self.soak.scrape_interval_s
                targets = [
                    (name, spec.service, self.ports[name])
                    for name, spec in sup.specs.items()
                    if name in self.ports
                ]
                await scraper.scrape_all(targets)
            self.invariants.check(time.time() - t0)
            if now >= next_progress:
                next_progress = now + _PROGRESS_EVERY_S
                self._progress(now, sup, bus)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CHECK_EVERY_S):
                    await stop.wait()

    def _progress(self, now: float, sup: Supervisor, bus: BusWatch) -> None:
        p = bus.progress
        last = max((r for r in p.accuracy if r > 0), default=None)
        acc = f"{p.accuracy[last]:.3f}" if last is not None else "-"
        restarts = sum(sup.restarts.values())
        print(
            f"t {now:6.0f}s  rounds {p.rounds_completed:>4}  accuracy {acc}  "
            f"applied {p.updates_applied:>6}  restarts {restarts:>3}  "
            f"violations {len(self.invariants.violations)}",
            flush=True,
        )

    async def _settle(self, bus: BusWatch, quiet_s: float = 5.0, limit_s: float = 45.0) -> None:
        """Wait until the observer has seen nothing new for `quiet_s` (at most `limit_s`)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            bus.changed.clear()
            try:
                async with asyncio.timeout(quiet_s):
                    await bus.changed.wait()
            except TimeoutError:
                return

    def _report(
        self,
        sup: Supervisor,
        bus: BusWatch,
        journals: JournalTail,
        scraper: Scraper,
        sys_watch: SysWatch,
        driver: Driver,
        started: float,
    ) -> dict[str, Any]:
        progress = bus.progress.summary(bus.progress.rounds_completed)
        rss = self.invariants["rss_bounded"]
        assert isinstance(rss, RssBounded)
        lag = self.invariants["consumer_lag_bounded"]
        violations = self.invariants.violations
        restarts = dict(sup.restarts)
        return {
            "events": [r.as_dict() for r in driver.records],
            "violations": [v.as_dict() for v in violations[:500]],
            "violation_count": len(violations),
            "invariants": self.invariants.summary(),
            "rounds_completed": progress["rounds_completed"],
            "updates_sent": journals.sent,
            "updates_acked": journals.acked,
            "updates_applied": progress["updates_applied"],
            "restarts": restarts,
            "rss_slope_mb_per_hour": {s: round(f.mb_per_hour, 2) for s, f in rss.fits().items()},
            "rss_fit": {s: f.as_dict() for s, f in rss.fits().items()},
            "lag_peaks": dict(sorted(getattr(lag, "peaks", {}).items())),
            "final_accuracy": progress["final_accuracy"],
            "late_updates": progress["late_updates"],
            "dead_letters": progress["dead_letters"],
            "dead_letter_reasons": progress["dead_letter_reasons"],
            "mosquitto_dropped": sys_watch.samples[-1][1] if sys_watch.samples else None,
            "mosquitto_dropped_samples": len(sys_watch.samples),
            "endpoints": {
                name: {
                    "port": port,
                    "metrics_answers": scraper.ok[name],
                    "metrics_failures": scraper.failed[name],
                    "healthz_answers": scraper.healthy[name],
                }
                for name, port in self.ports.items()
            },
            "metric_families": {s: sorted(n) for s, n in sorted(scraper.names.items())},
            "plan": str(self.soak.plan),
            "devices": self.scenario.devices,
            "devices_at_start": len(self.initial),
            "devices_at_end": len(driver.active),
            "fleet_processes": self.soak.fleet_processes,
            "minutes": self.soak.minutes,
            "scenario": to_env(self.scenario),
            "wall_seconds": round(time.monotonic() - started, 1),
        }
