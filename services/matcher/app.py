"""The matcher process: replay its inputs, then run the round clock in the runtime; and `main`.

    rounds, expert-load, profiles ──replay (start)──► RoundClock ◄──runtime (group)── same topics
                                                          │
                  rounds (RoundOpened, RoundClosed), updates (markers), assignments ◄─┘

Run exactly one matcher: it is the round clock (a second one would open rounds twice). Its
state is not checkpointed: `rounds` holds every round event and `profiles` / `expert-load` the
latest per key, so it is rebuilt from them at start (`brokers.replay`), before the runtime's
first tick can act.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

from brokers.replay import replay_topics
from brokers.settings import BrokerSettings
from fedmoe.scenario import ScenarioSettings
from moe.load import ExpertLoadState
from moe.matching import make_strategy
from moe.scenario import build_scenario
from schemas.messages import ProfileSnapshot
from services.entrypoint import service_main
from services.matcher.clock import ClockConfig, RoundClock
from services.matcher.handler import INPUTS, MatcherHandler
from services.matcher.planning import MatchingContext, RoundPlan, model_part_ids, plan_round
from services.matcher.settings import MatcherSettings
from services.metrics import ServiceMetrics
from services.runtime import RuntimeSettings, ServiceRuntime, stop_on_signals

log = logging.getLogger(__name__)

NAME = "matcher"


def build_clock(settings: MatcherSettings, scenario_settings: ScenarioSettings) -> RoundClock:
    """The round clock for these settings, its planner bound to the scenario and strategy."""
    scenario = build_scenario(scenario_settings.config())
    context = MatchingContext.from_scenario(scenario)
    strategy = make_strategy(settings.strategy)

    def planner(r: int, profiles: Sequence[ProfileSnapshot], load: ExpertLoadState) -> RoundPlan:
        return plan_round(profiles, load, round=r, context=context, strategy=strategy)

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
    )
    return RoundClock(config, planner)


class Matcher:
    """The matcher as one async context manager: replay on enter, then the runtime."""

    def __init__(
        self,
        settings: MatcherSettings,
        scenario: ScenarioSettings,
        broker: BrokerSettings,
        runtime: RuntimeSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._broker = broker
        self._runtime_settings = runtime if runtime is not None else RuntimeSettings()
        self.metrics = ServiceMetrics(NAME)
        self._clock = clock
        self.handler = MatcherHandler(
            build_clock(settings, scenario), broker.topic_table(), self.metrics, now=clock
        )
        self._runtime: ServiceRuntime | None = None
        self._stack: AsyncExitStack | None = None

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("Matcher is not reentrant")
        started = time.monotonic()
        replay = await replay_topics(
            self._broker,
            INPUTS,
            timeout_s=self.settings.replay_timeout_s,
            client_id=f"{NAME}-replay",
        )
        folded = self.handler.restore(replay.records)
        state = self.handler.clock
        log.info(
            "%s: replayed %d records (%d folded, %d undecodable) in %.2fs: latest opened %s, "
            "latest closed %s, open %s, %d profiles",
            NAME,
            len(replay.records),
            folded,
            replay.skipped,
            time.monotonic() - started,
            state.opened.round if state.opened else None,
            state.closed.round if state.closed else None,
            state.open_round,
            len(state.profiles()),
        )
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._runtime = await stack.enter_async_context(
                ServiceRuntime(
                    self._broker,
                    name=NAME,
                    handler=self.handler,
                    inputs=INPUTS,
                    group_id=self.settings.group_id,
                    settings=self._runtime_settings,
                    metrics=self.metrics,
                    clock=self._clock,
                )
            )
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._stack = stack
        return self

    def stop(self) -> None:
        """Finish what is in hand and stop (safe to call more than once)."""
        if self._runtime is not None:
            self._runtime.stop()

    async def wait(self) -> None:
        """Return when the runtime has stopped."""
        if self._runtime is not None:
            await self._runtime.wait()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)


async def run_matcher(
    settings: MatcherSettings,
    scenario: ScenarioSettings,
    broker: BrokerSettings,
    runtime: RuntimeSettings,
) -> None:
    """Run the matcher until SIGTERM / SIGINT, then drain and stop."""
    async with Matcher(settings, scenario, broker, runtime) as matcher:
        with stop_on_signals(matcher.stop):
            await matcher.wait()


def main(argv: Sequence[str]) -> int:
    """`fedmoe service matcher [flags]`."""
    return service_main(
        argv,
        name=NAME,
        description="The round clock: opens rounds, matches devices to experts, closes rounds.",
        settings=(MatcherSettings, ScenarioSettings, BrokerSettings, RuntimeSettings),
        run=run_matcher,
    )
