"""The evaluator process: replay, then score every closed round's model; and `main`.

    metrics, rounds, model ──replay (start)──► EvaluationBook ◄──runtime (group)── rounds, model
                                                     │
                                       metrics (EvalMetrics per closed round) ◄─┘

State is not checkpointed: `model` holds every part version (compacted in production: the
latest per part, which is what a restarted evaluator needs for the rounds still waiting),
`rounds` every RoundClosed and `metrics` the rounds scored already. Scoring runs the numpy
path (`moe.training.evaluate`) under one BLAS thread: the test set is small, and more threads
only contend with the other services on the machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from brokers.settings import BrokerSettings
from fedmoe.scenario import ScenarioSettings
from moe.parts import model_layout
from moe.scenario import Scenario, build_scenario
from moe.tensors import PartTensors
from moe.training import evaluate, single_threaded_blas
from services.entrypoint import service_main
from services.evaluator.book import EvaluationBook
from services.evaluator.handler import INPUTS, REPLAYED, EvaluatorHandler, Scorer
from services.evaluator.settings import EvaluatorSettings
from services.metrics import ServiceMetrics
from services.resume import ResumedService
from services.runtime import RuntimeSettings, stop_on_signals

NAME = "evaluator"


def held_out_scorer(scenario: Scenario) -> Scorer:
    """Accuracy and loss of a global model on the scenario's held-out test set."""
    config, x, y = scenario.model, scenario.data.test_x, scenario.data.test_y

    def score(parts: Mapping[str, PartTensors]) -> tuple[float, float]:
        return evaluate(config, parts, x, y)

    return score


def evaluator_service(
    settings: EvaluatorSettings,
    scenario: ScenarioSettings,
    broker: BrokerSettings,
    runtime: RuntimeSettings | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> ResumedService[EvaluatorHandler]:
    """The evaluator as an async context manager (replay on enter, then the runtime)."""
    metrics = ServiceMetrics(NAME)
    world = build_scenario(scenario.config())
    book = EvaluationBook(model_layout(world.model), settings.history)
    handler = EvaluatorHandler(
        book, held_out_scorer(world), broker.topic_table(), metrics, now=clock
    )
    return ResumedService(
        broker,
        name=NAME,
        handler=handler,
        replay=REPLAYED,
        inputs=INPUTS,
        group_id=settings.group_id,
        settings=runtime,
        replay_timeout_s=settings.replay_timeout_s,
        metrics=metrics,
        clock=clock,
    )


async def run_evaluator(
    settings: EvaluatorSettings,
    scenario: ScenarioSettings,
    broker: BrokerSettings,
    runtime: RuntimeSettings,
) -> None:
    """Run the evaluator until SIGTERM / SIGINT, then drain and stop."""
    with single_threaded_blas():
        async with evaluator_service(settings, scenario, broker, runtime) as service:
            with stop_on_signals(service.stop):
                await service.wait()


def main(argv: Sequence[str]) -> int:
    """`fedmoe service evaluator [flags]`."""
    return service_main(
        argv,
        name=NAME,
        description="Scores the global model of every closed round on the held-out test set.",
        settings=(EvaluatorSettings, ScenarioSettings, BrokerSettings, RuntimeSettings),
        run=run_evaluator,
    )
