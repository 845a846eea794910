"""The evaluator's book: a round is scored once it holds exactly the versions its RoundClosed
names, whichever arrives first; once only; bounded history; impossible rounds dropped."""

from __future__ import annotations

import numpy as np
import pytest

from moe.model import MoEConfig, init_weights
from moe.parts import model_layout
from schemas.messages import EvalMetrics, PartVersion, RoundClosed
from services.errors import InvalidPayload
from services.evaluator.book import EvaluationBook

CONFIG = MoEConfig(num_experts=3, top_k=2)
LAYOUT = model_layout(CONFIG)
PARTS = tuple(LAYOUT)


def version(part: str, v: int) -> PartVersion:
    """Part `part` at version `v`: the weights of init seed `v` (so versions differ)."""
    return PartVersion(
        message_id=f"{part}-v{v}",
        device_id="aggregator",
        round=v,
        timestamp=1.0,
        part=part,
        version=v,
        layout_version=1,
        tensors=init_weights(CONFIG, v)[part],
    )


def closed(r: int, versions: dict[str, int]) -> RoundClosed:
    return RoundClosed(
        message_id=f"rc-{r}",
        device_id="matcher",
        round=r,
        timestamp=1.0,
        reason="parts-closed",
        parts_closed=len(versions),
        model_versions=versions,
    )


def all_at(v: int) -> dict[str, int]:
    return dict.fromkeys(PARTS, v)


def test_round_closed_first_waits_for_every_version() -> None:
    book = EvaluationBook(LAYOUT)
    book.on_round_closed(closed(0, all_at(0)))
    for part in PARTS:
        assert book.take_ready().ready == []
        book.on_part_version(version(part, 0))
    (ready,) = book.take_ready().ready
    assert ready.closed.round == 0
    for part in PARTS:
        for name, arr in init_weights(CONFIG, 0)[part].items():
            np.testing.assert_array_equal(ready.parts[part][name], arr)
    assert book.take_ready().ready == []  # once
    assert book.done == {0}


def test_versions_first_and_only_the_named_ones_count() -> None:
    book = EvaluationBook(LAYOUT)
    for part in PARTS:
        book.on_part_version(version(part, 0))
    versions = {**all_at(0), "expert-1": 1}
    book.on_round_closed(closed(1, versions))
    assert book.take_ready().ready == []  # holds expert-1 v0, not v1
    book.on_part_version(version("expert-1", 1))
    (ready,) = book.take_ready().ready
    np.testing.assert_array_equal(
        ready.parts["expert-1"]["fc1.weight"], init_weights(CONFIG, 1)["expert-1"]["fc1.weight"]
    )
    np.testing.assert_array_equal(
        ready.parts["expert-0"]["fc1.weight"], init_weights(CONFIG, 0)["expert-0"]["fc1.weight"]
    )


def test_a_round_closed_after_newer_versions_still_gets_its_own() -> None:
    book = EvaluationBook(LAYOUT, history=3)
    for v in range(3):
        for part in PARTS:
            book.on_part_version(version(part, v))
    book.on_round_closed(closed(1, all_at(1)))  # lagging behind the model topic
    book.on_round_closed(closed(2, all_at(2)))
    ready = book.take_ready().ready
    assert [r.closed.round for r in ready] == [1, 2]
    np.testing.assert_array_equal(
        ready[0].parts["shared"]["encoder.weight"],
        init_weights(CONFIG, 1)["shared"]["encoder.weight"],
    )


def test_history_is_bounded_but_keeps_what_a_waiting_round_needs() -> None:
    book = EvaluationBook(LAYOUT, history=2)
    book.on_round_closed(closed(1, all_at(1)))
    book.on_part_version(version("shared", 1))
    for v in range(2, 7):
        book.on_part_version(version("shared", v))
    assert book.held("shared") == [1, 5, 6]
    assert book.waiting == [1]


def test_a_round_whose_version_was_passed_is_dropped() -> None:
    book = EvaluationBook(LAYOUT, history=1)
    for part in PARTS:
        book.on_part_version(version(part, 0))
        book.on_part_version(version(part, 1))
    book.on_round_closed(closed(0, all_at(0)))  # v0 pruned before the round was known
    taken = book.take_ready()
    assert taken.ready == []
    assert [r for r, _ in taken.dropped] == [0]
    assert book.waiting == []


def test_rounds_already_scored_are_not_scored_again() -> None:
    book = EvaluationBook(LAYOUT)
    book.on_metrics(
        EvalMetrics(
            message_id="eval-0",
            device_id="evaluator",
            round=0,
            timestamp=1.0,
            accuracy=0.1,
            loss=2.3,
            model_versions=all_at(0),
        )
    )
    for part in PARTS:
        book.on_part_version(version(part, 0))
    book.on_round_closed(closed(0, all_at(0)))
    book.on_round_closed(closed(1, all_at(0)))
    assert [r.closed.round for r in book.take_ready().ready] == [1]
    book.on_round_closed(closed(1, all_at(0)))  # redelivered
    assert book.take_ready().ready == []


def test_bad_inputs_are_refused() -> None:
    book = EvaluationBook(LAYOUT)
    wrong_shape = {**init_weights(CONFIG, 0)["shared"], "head.bias": np.zeros(3, np.float32)}
    bad = PartVersion(
        message_id="x",
        device_id="aggregator",
        round=0,
        timestamp=1.0,
        part="shared",
        version=0,
        layout_version=1,
        tensors=wrong_shape,
    )
    with pytest.raises(InvalidPayload, match="bad-part"):
        book.on_part_version(bad)
    with pytest.raises(InvalidPayload, match="bad-part"):
        book.on_part_version(
            PartVersion(
                message_id="y",
                device_id="aggregator",
                round=0,
                timestamp=1.0,
                part="expert-3",  # the model has 3 experts
                version=0,
                layout_version=1,
                tensors=init_weights(CONFIG, 0)["expert-0"],
            )
        )
    with pytest.raises(InvalidPayload, match="bad-versions"):
        book.on_round_closed(closed(0, {"shared": 0}))
    assert book.held("shared") == []
    assert book.waiting == []
