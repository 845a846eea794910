"""What a device accepts from MQTT: the right message type on each topic, for this device,
parts and experts of this model, tensors on the layout; the rest is a counted Drop."""

from __future__ import annotations

import numpy as np
import pytest

from clients.inbound import Drop, DropReason, InboundFilter
from moe.parts import SHARED
from schemas import DeviceStatus, PartVersion, RoundClosed, encode
from schemas.limits import MAX_MESSAGE_BYTES
from schemas.messages import gate_row
from schemas.topics import TopicTable
from tests.unit.clients.helpers import ack, assignment, part_version, scenario, versions

TABLE = TopicTable(namespace="unit", mqtt_root="fleet")
SC = scenario()
ME = 3
FILTER = InboundFilter(TABLE, "dev-00003", SC.model)
INITIAL = SC.initial_parts()


GATES = {p: gate_row(t) for p, t in INITIAL.items() if p != SHARED}


def round_closed(round_: int = 2, gates: dict[str, dict[str, np.ndarray]] = GATES) -> RoundClosed:
    return RoundClosed(
        message_id="rc", device_id="matcher", round=round_, timestamp=1.0, reason="complete",
        parts_closed=5, model_versions=versions(SC, 1), gates=gates,
    )  # fmt: skip


def test_subscriptions_are_the_round_shared_and_its_own_topics() -> None:
    assert FILTER.subscriptions == [
        "fleet/round",
        "fleet/model/shared",
        "fleet/model/shared/+",
        "fleet/dev-00003/assignment",
        "fleet/dev-00003/ack",
    ]
    assert FILTER.part_topics("expert-2") == ["fleet/model/expert-2", "fleet/model/expert-2/+"]


def test_the_round_marker_carries_every_experts_gate_row() -> None:
    got = FILTER.classify("fleet/round", encode(round_closed()))
    assert isinstance(got, RoundClosed)
    assert set(got.gates) == {f"expert-{e}" for e in range(SC.model.num_experts)}
    for part, row in got.gates.items():
        assert set(row) == {"gate.weight", "gate.bias"}
        np.testing.assert_array_equal(row["gate.weight"], INITIAL[part]["gate.weight"])
    # A gate row off the gate layout, or of a part that has none: the marker is dropped.
    wide = {"gate.weight": np.zeros(7, np.float32), "gate.bias": np.zeros(1, np.float32)}
    bad = FILTER.classify("fleet/round", encode(round_closed(gates=GATES | {"expert-1": wide})))
    assert isinstance(bad, Drop)
    assert bad.reason is DropReason.LAYOUT
    shared_row = {"gate.weight": INITIAL["expert-0"]["gate.weight"]} | {
        "gate.bias": INITIAL["expert-0"]["gate.bias"]
    }
    stray = FILTER.classify("fleet/round", encode(round_closed(gates=GATES | {SHARED: shared_row})))
    assert isinstance(stray, Drop)
    assert stray.reason is DropReason.UNKNOWN_PART
    # One without gate rows (a matcher of schema 1.0) is taken: the device then says why it
    # cannot announce itself (`Event.GATES_MISSING`).
    assert FILTER.classify("fleet/round", encode(round_closed(gates={}))) == round_closed(gates={})


def test_accepted_messages() -> None:
    closed = round_closed(gates={})  # with arrays it is compared field by field above
    assert FILTER.classify("fleet/round", encode(closed)) == closed
    version = part_version("expert-2", 4, INITIAL["expert-2"])
    got = FILTER.classify("fleet/model/expert-2", encode(version))
    assert isinstance(got, PartVersion)
    assert (got.part, got.version, got.message_id) == ("expert-2", 4, version.message_id)
    for name, array in version.tensors.items():
        np.testing.assert_array_equal(got.tensors[name], array)
    task = assignment(ME, 2, (0, 3), versions(SC))
    assert FILTER.classify("fleet/dev-00003/assignment", encode(task)) == task
    verdict = ack("up-dev-00003-r2", SHARED)
    assert FILTER.classify("fleet/dev-00003/ack", encode(verdict)) == verdict


def _bad_cases() -> list[tuple[str, str, bytes, DropReason]]:
    part_1 = INITIAL["expert-1"]
    good_part = encode(part_version("expert-1", 1, part_1))
    wrong_shape = dict(part_1) | {"fc1.bias": np.zeros(3, dtype=np.float32)}
    missing = {k: v for k, v in part_1.items() if k != "gate.bias"}
    status = DeviceStatus(
        message_id="s", device_id="dev-00003", round=1, timestamp=1.0, online=True
    )
    others = encode(assignment(4, 1, (0,), versions(SC)))
    mine, model, acks = "fleet/dev-00003/assignment", "fleet/model/expert-1", "fleet/dev-00003/ack"
    too_big = versions(SC) | {"expert-4": 0}
    return [
        ("other topic", "fleet/dev-00004/assignment", others, DropReason.TOPIC),
        ("garbage", "fleet/round", b"\xc1\x00garbage", DropReason.UNDECODABLE),
        ("oversize", "fleet/round", b"\x00" * (MAX_MESSAGE_BYTES + 1), DropReason.UNDECODABLE),
        ("wrong type", "fleet/round", encode(status), DropReason.WRONG_TYPE),
        ("no such expert", "fleet/model/expert-9", good_part, DropReason.UNKNOWN_PART),
        ("another part's topic", "fleet/model/expert-0", good_part, DropReason.UNKNOWN_PART),
        ("wrong shape", model, encode(part_version("expert-1", 1, wrong_shape)), DropReason.LAYOUT),
        ("missing tensor", model, encode(part_version("expert-1", 1, missing)), DropReason.LAYOUT),
        (
            "layout version",
            model,
            encode(part_version("expert-1", 1, part_1, layout_version=2)),
            DropReason.LAYOUT,
        ),
        ("assignment for another", mine, others, DropReason.OTHER_DEVICE),
        (
            "expert outside the model",
            mine,
            encode(assignment(ME, 1, (1, 4), too_big)),
            DropReason.BAD_ASSIGNMENT,
        ),
        (
            "no version of an assigned part",
            mine,
            encode(assignment(ME, 1, (2,), {SHARED: 0})),
            DropReason.BAD_ASSIGNMENT,
        ),
        ("ack for another", acks, encode(ack("u", SHARED, device=4)), DropReason.OTHER_DEVICE),
        ("ack of no such part", acks, encode(ack("u", "expert-6")), DropReason.UNKNOWN_PART),
    ]


@pytest.mark.parametrize(("case", "topic", "payload", "reason"), _bad_cases())
def test_bad_input_is_a_drop_with_a_reason(
    case: str, topic: str, payload: bytes, reason: DropReason
) -> None:
    got = FILTER.classify(topic, payload)
    assert isinstance(got, Drop), case
    assert got.reason is reason, (case, got.detail)
    assert got.detail


def test_random_bytes_never_raise() -> None:
    rng = np.random.default_rng(0)
    topics = [t.replace("+", "expert-1") for t in FILTER.subscriptions]
    for _ in range(300):
        payload = rng.integers(0, 256, size=int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        topic = topics[int(rng.integers(0, len(topics)))]
        assert isinstance(FILTER.classify(topic, payload), Drop)
