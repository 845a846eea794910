"""The demo's progress fold: counts once per record identity, summary figures."""

from __future__ import annotations

import pytest

from fedmoe.demo.progress import RunProgress
from schemas.messages import (
    DeadLetter,
    EvalMetrics,
    PartClosed,
    RoundClosed,
    RoundOpened,
    UpdateAck,
)

ENV = {"timestamp": 1.0}


def _ack(update: str, part: str, status: str) -> UpdateAck:
    return UpdateAck(
        message_id=f"a-{update}-{part}-{status}",
        device_id="dev-00001",
        round=1,
        update_id=update,
        part=part,
        status=status,
        **ENV,
    )


def test_fold_and_summary() -> None:
    p = RunProgress()
    p.fold(
        EvalMetrics(
            message_id="m0",
            device_id="evaluator",
            round=0,
            accuracy=0.1,
            loss=2.3,
            model_versions={},
            **ENV,
        )
    )
    p.fold(
        RoundOpened(
            message_id="o1",
            device_id="matcher",
            round=1,
            deadline=5.0,
            strategy="fitness",
            devices=3,
            expected_parts={"shared": 3, "expert-0": 2, "expert-1": 2},
            model_versions={},
            **ENV,
        )
    )
    p.fold(
        RoundOpened(
            message_id="o2",
            device_id="matcher",
            round=2,
            deadline=9.0,
            strategy="fitness",
            devices=3,
            expected_parts={"shared": 3, "expert-0": 3, "expert-1": 1},
            model_versions={},
            **ENV,
        )
    )
    for rnd, part, n in ((1, "shared", 3), (1, "expert-0", 2), (1, "shared", 3)):
        p.fold(
            PartClosed(
                message_id=f"p{rnd}{part}",
                device_id="aggregator",
                round=rnd,
                part=part,
                version=1,
                applied=n,
                reason="quorum",
                **ENV,
            )
        )
    for rnd in (0, 1):
        p.fold(
            RoundClosed(
                message_id=f"c{rnd}",
                device_id="matcher",
                round=rnd,
                reason="quorum",
                parts_closed=3,
                **ENV,
            )
        )
    p.fold(
        EvalMetrics(
            message_id="m1",
            device_id="evaluator",
            round=1,
            accuracy=0.4,
            loss=1.0,
            model_versions={},
            **ENV,
        )
    )
    p.fold(_ack("u1", "shared", "applied"))
    p.fold(_ack("u1", "shared", "duplicate"))  # a resend: still applied once
    p.fold(_ack("u1", "shared", "duplicate"))  # the same ack re-produced: counted once
    p.fold(_ack("u2", "shared", "late"))
    p.fold(
        DeadLetter(
            message_id="d1",
            device_id="gateway",
            round=0,
            source="fleet/x/update",
            reason="malformed",
            error="MalformedError",
            original=b"\x00",
            original_size=1,
            **ENV,
        )
    )

    s = p.summary(rounds=2)
    assert s["rounds_completed"] == 1
    assert s["initial_accuracy"] == 0.1
    assert s["accuracy_per_round"] == [0.4]
    assert s["final_accuracy"] == 0.4
    assert s["load_cv_per_round"] == [0.0]
    assert p.load_cv[2] == pytest.approx(0.5)  # clients per expert (3, 1): std 1 / mean 2
    assert s["updates_applied"] == 5  # (1, shared) republished counts once
    assert s["updates_acked_on_kafka"] == 1
    assert s["late_updates"] == 1
    assert s["duplicates_dropped"] == 1
    assert s["dead_letters"] == 1
    assert s["dead_letter_reasons"] == {"malformed": 1}
    assert "round   1/2" in p.line(2)


def test_unevaluated_round_is_none() -> None:
    p = RunProgress()
    p.fold(
        RoundClosed(
            message_id="c1", device_id="matcher", round=1, reason="deadline", parts_closed=0, **ENV
        )
    )
    s = p.summary(rounds=1)
    assert s["accuracy_per_round"] == [None]
    assert s["final_accuracy"] is None
