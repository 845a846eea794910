"""The matcher process: replay its inputs, then run the round clock in the runtime; and `main`.

    rounds, expert-load, profiles ──replay (start)──► RoundClock ◄──runtime (group)── same topics
                                                          │
                  rounds (RoundOpened, RoundClosed), updates (markers), assignments ◄─┘

Run exactly one matcher: it is the round clock (a second one would open rounds twice). Its
state is not checkpointed: `rounds` holds every round event and `profiles` / `expert-load` the
latest per key, so it is rebuilt from them at start (`services.resume`), before the runtime's
first tick can act; `assignments` is read too, to tell whether the open round's assignments
went out before the restart (`RoundClock.resume`).

The strategy (`FEDMOE_MATCHER_STRATEGY`, any of `moe.matching.STRATEGY_NAMES`) is built once per
run (`build_clock`) and that one instance plans every round, so a stateful strategy keeps its
state across rounds as in `fedmoe experiment`. That state lives in memory only: after a
matcher restart a new instance is built and Oort's pacer starts over: its preferred round
duration T is back at T_0 (the raises decided before are forgotten) and its utility history
holds only the rounds planned since (its exploration rate is computed from the round number
and carries on). So an open round planned again by `RoundClock.resume` may differ from the
logged plan, and then closes by its deadline. The stateless strategies plan the same after a
restart.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

from brokers.settings import BrokerSettings
from fedmoe.scenario import ScenarioSettings
from moe.matching import make_strategy
from moe.scenario import build_scenario
from services.entrypoint import service_main
from services.matcher.clock import ClockConfig, RoundClock
from services.matcher.handler import INPUTS, LATEST_PER_KEY, REPLAYED, MatcherHandler
from services.matcher.planning import MatchingContext, RoundPlanner, model_part_ids
from services.matcher.settings import MatcherSettings
from services.metrics import ServiceMetrics
from services.resume import ResumedService
from services.runtime import RuntimeSettings, stop_on_signals

log = logging.getLogger(__name__)

NAME = "matcher"


def build_clock(settings: MatcherSettings, scenario_settings: ScenarioSettings) -> RoundClock:
    """The round clock for these settings; its planner holds the run's one strategy instance,
    built here (so once per process: a restarted matcher starts a new one)."""
    scenario = build_scenario(scenario_settings.config())
    context = MatchingContext.from_scenario(scenario)
    # One instance for the whole run: every round is planned with it (Oort keeps its pacer).
    planner = RoundPlanner(context, make_strategy(settings.strategy))
    config = ClockConfig(
        parts=model_part_ids(context.num_experts),
        strategy=settings.strategy,
        deadline_wall_s=scenario_settings.round_deadline_wall_s,
        grace_s=settings.grace_s,
        open_delay_s=settings.open_delay_s,
        max_wait_s=settings.max_wait_s,
        max_rounds=settings.max_rounds,
        fleet_size=scenario_settings.devices,
        wait_for_load=settings.wait_for_load,
        settle_quorum=settings.settle_quorum,
        open_on_recent=settings.open_on_recent,
    )
    return RoundClock(config, planner)


def matcher_service(
    settings: MatcherSettings,
    scenario: ScenarioSettings,
    broker: BrokerSettings,
    runtime: RuntimeSettings | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> ResumedService[MatcherHandler]:
    """The matcher as an async context manager (replay on enter, then the runtime)."""
    metrics = ServiceMetrics(NAME)
    handler = MatcherHandler(
        build_clock(settings, scenario), broker.topic_table(), metrics, now=clock
    )
    # The quiet-period rule can only fire on a tick, and an idle loop ticks once per poll:
    # with the runtime's 1 s tick and 0.5 s poll a round opened up to ~1 s after its quiet
    # period ended (`benchmarks.round`). Ticks of a fifth of the quiet period keep that small.
    runtime = runtime if runtime is not None else RuntimeSettings()
    step = settings.open_delay_s / 5 if settings.open_delay_s > 0 else runtime.tick_interval_s
    runtime = dataclasses.replace(
        runtime,
        tick_interval_s=min(runtime.tick_interval_s, step),
        poll_timeout_s=min(runtime.poll_timeout_s, step),
    )
    return ResumedService(
        broker,
        name=NAME,
        handler=handler,
        replay=REPLAYED,
        inputs=INPUTS,
        latest_per_key=LATEST_PER_KEY,
        group_id=settings.group_id,
        settings=runtime,
        replay_timeout_s=settings.replay_timeout_s,
        metrics=metrics,
        clock=clock,
    )


async def run_matcher(
    settings: MatcherSettings,
    scenario: ScenarioSettings,
    broker: BrokerSettings,
    runtime: RuntimeSettings,
) -> None:
    """Run the matcher until SIGTERM / SIGINT, then drain and stop."""
    async with matcher_service(settings, scenario, broker, runtime) as service:
        clock = service.handler.clock
        log.info(
            "%s: resumed: latest opened %s, latest closed %s, open now %s, %d profiles",
            NAME,
            clock.opened.round if clock.opened else None,
            clock.closed.round if clock.closed else None,
            clock.open_round,
            len(clock.profiles()),
        )
        with stop_on_signals(service.stop):
            await service.wait()


def main(argv: Sequence[str]) -> int:
    """`fedmoe service matcher [flags]`."""
    return service_main(
        argv,
        name=NAME,
        description="The round clock: opens rounds, matches devices to experts, closes rounds.",
        settings=(MatcherSettings, ScenarioSettings, BrokerSettings, RuntimeSettings),
        run=run_matcher,
    )
