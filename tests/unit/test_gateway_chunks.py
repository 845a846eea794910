"""The gateway and large messages: update chunks forwarded keyed by part and charged their
share of one message; part versions over one MQTT message published as retained chunks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from brokers.mqtt import MqttMessage
from schemas import (
    DeviceStatus,
    MessageChunk,
    PartPayload,
    PartUpdate,
    PartVersion,
    Telemetry,
    decode,
    encode,
)
from schemas.chunks import Reassembler, encode_records, split
from schemas.limits import CHUNK_BYTES, MAX_ASSEMBLED_BYTES, MAX_MESSAGE_BYTES
from schemas.messages import gate_row
from schemas.topics import Topic
from services.gateway.app import EgressHandler, _mqtt_payloads
from services.gateway.logic import Forward, InboundKind, Reject, route_inbound
from services.gateway.ratelimit import Admission, DeviceRateLimiter, RateLimit, message_cost
from services.handler import InboundRecord
from services.metrics import Outcome, ServiceMetrics
from tests.unit.schemas.helpers import same
from tests.unit.services.test_gateway_ratelimit import TABLE, _ingress

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def part_update(
    nbytes: int = 64, device: str = "dev-1", part: str = "expert-1", update_id: str = "u-1"
) -> PartUpdate:
    """A part update whose one tensor is `nbytes` bytes or a little more."""
    w = np.arange(nbytes // 4 + 1, dtype=np.float32)
    payload = PartPayload(part=part, base_version=2, weight=3.0, loss=0.1, tensors={"w": w})
    return PartUpdate(
        message_id=f"{update_id}/{part}",
        device_id=device,
        round=4,
        timestamp=9.0,
        update_id=update_id,
        parts_total=2,
        num_samples=30,
        payload=payload,
    )


def small_chunks(message: PartUpdate | PartVersion, key: str, count: int) -> list[MessageChunk]:
    """`message` cut into `count` chunks (small ones: fast)."""
    data = encode(message)
    return split(data, message, key=key, chunk_bytes=-(-len(data) // count))


def version(nbytes: int = 64, part: str = "expert-1") -> PartVersion:
    tensors = {
        "fc1.weight": np.arange(nbytes // 4 + 1, dtype=np.float32),
        "gate.weight": np.ones(4, dtype=np.float32),
        "gate.bias": np.zeros(1, dtype=np.float32),
    }
    return PartVersion(
        message_id=f"pv-{part}-3",
        device_id="aggregator",
        round=4,
        timestamp=1.0,
        part=part,
        version=3,
        layout_version=1,
        tensors=tensors,
    )


# --- route_inbound -------------------------------------------------------------------------------


def test_each_chunk_of_a_large_part_update_is_forwarded_keyed_by_its_part() -> None:
    update = part_update(MAX_MESSAGE_BYTES + 4096)
    payloads = encode_records(update, key="expert-1")
    count = len(payloads)
    assert count >= 3
    reassembler = Reassembler()
    assembled = None
    for payload in payloads:
        decision = route_inbound(TABLE, "fleet/dev-1/update", payload)
        assert isinstance(decision, Forward)
        assert (decision.kind, decision.device) == (InboundKind.UPDATE, "dev-1")
        (out,) = decision.outputs
        assert (out.topic, out.key) == (Topic.UPDATES, "expert-1")
        chunk = out.message
        assert isinstance(chunk, MessageChunk)
        assert chunk is decision.message
        assert (chunk.whole_type, chunk.whole_id, chunk.count) == (
            "part-update",
            "u-1/expert-1",
            count,
        )
        assembled = reassembler.add(chunk, 0.0)
    assert assembled is not None
    assert same(assembled.message, update)


def test_a_whole_part_update_is_not_taken_from_a_device() -> None:
    decision = route_inbound(TABLE, "fleet/dev-1/update", encode(part_update()))
    assert isinstance(decision, Reject)  # a PartUpdate is what the gateway makes, not takes
    assert decision.error == "WrongMessageType"
    status = DeviceStatus(message_id="s", device_id="dev-1", round=0, timestamp=1.0, online=True)
    assert isinstance(route_inbound(TABLE, "fleet/dev-1/status", encode(status)), Forward)


def test_a_chunk_claiming_another_device_is_a_device_mismatch() -> None:
    chunk = small_chunks(part_update(device="dev-2"), "expert-1", 3)[0]
    decision = route_inbound(TABLE, "fleet/dev-1/update", encode(chunk))
    assert isinstance(decision, Reject)
    assert decision.error == "DeviceMismatch"
    assert decision.device == "dev-1"
    assert "dev-2" in decision.reason


@pytest.mark.parametrize(
    ("case", "chunk"),
    [
        ("a chunk of a part version", small_chunks(version(), "expert-1", 3)[0]),
        (
            "a part version dressed as a device's",
            dataclasses.replace(small_chunks(version(), "expert-1", 3)[0], device_id="dev-1"),
        ),
        ("key nonsense", small_chunks(part_update(), "nonsense", 3)[1]),
        ("key empty", small_chunks(part_update(), "", 3)[1]),
        ("key of no expert", small_chunks(part_update(), "expert-99999", 3)[1]),
        ("a chunk of a status", small_chunks(part_update(), "expert-1", 3)[2]),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_a_chunk_of_anything_but_a_part_update_keyed_by_a_part_is_rejected(
    case: str, chunk: MessageChunk
) -> None:
    if case == "a chunk of a status":
        chunk = dataclasses.replace(chunk, whole_type="status")
    decision = route_inbound(TABLE, "fleet/dev-1/update", encode(chunk))
    assert isinstance(decision, Reject), case
    assert decision.device == "dev-1"
    if chunk.device_id == "dev-1":
        assert decision.error == "WrongMessageType", case
    else:
        assert decision.error == "DeviceMismatch", case


@pytest.mark.parametrize("kind", ["telemetry", "status"])
def test_a_chunk_on_a_telemetry_or_status_topic_is_the_wrong_message_type(kind: str) -> None:
    chunk = small_chunks(part_update(), "expert-1", 3)[0]
    decision = route_inbound(TABLE, f"fleet/dev-1/{kind}", encode(chunk))
    assert isinstance(decision, Reject)
    assert decision.error == "WrongMessageType"
    assert MessageChunk.__name__ in decision.reason
    assert Telemetry.__name__ in decision.reason or DeviceStatus.__name__ in decision.reason


# --- the rate limit ------------------------------------------------------------------------------


def test_a_message_costs_one_token_and_one_per_chunk_of_bytes_above_that() -> None:
    assert message_cost(0) == 1.0
    assert message_cost(CHUNK_BYTES) == 1.0
    assert message_cost(3 * CHUNK_BYTES) == 3.0
    clock = Clock()
    limiter = DeviceRateLimiter(RateLimit(rate_per_s=1.0, burst=4.0), clock)
    assert limiter.admit("big", message_cost(3 * CHUNK_BYTES)) is Admission.PASS
    assert limiter.admit("big", message_cost(CHUNK_BYTES)) is Admission.PASS
    assert limiter.admit("big", message_cost(10)) is not Admission.PASS  # the burst is spent


def test_the_ingress_charges_tiny_chunks_like_messages_before_decoding_them() -> None:
    # A device cannot buy more records by cutting its update finer: 40 tiny chunks cost 40
    # tokens, so a burst of 2 lets 2 through and drops (one sampled letter) the rest.
    limiter = DeviceRateLimiter(RateLimit(rate_per_s=1.0, burst=2.0), Clock())
    ingress = _ingress(limiter)
    chunks = small_chunks(part_update(4096), "expert-1", 40)
    assert len(chunks) == 40
    records = []
    for i, chunk in enumerate(chunks):
        message = MqttMessage(
            topic="fleet/dev-1/update", payload=encode(chunk), qos=1, retain=False, mid=i,
            connection=0,
        )  # fmt: skip
        records += ingress._records(message)
    forwarded = [r for r in records if r.topic == TABLE.name(Topic.UPDATES)]
    assert [decode(r.value) for r in forwarded] == chunks[:2]
    assert {r.key for r in forwarded} == {b"expert-1"}
    assert ingress.notes["rate_limited"] == 38


# --- egress: a large part version as retained chunks --------------------------------------------


def test_a_small_payload_is_one_publish_on_its_topic() -> None:
    message = version()
    payload = encode(message)
    assert _mqtt_payloads("fleet/model/expert-1", payload, message) == [
        ("fleet/model/expert-1", payload)
    ]


def test_a_large_payload_is_its_chunks_on_numbered_topics() -> None:
    message = version(MAX_MESSAGE_BYTES + 4096)
    payload = encode(message, max_bytes=MAX_ASSEMBLED_BYTES)
    published = _mqtt_payloads("fleet/model/expert-1", payload, message)
    assert len(published) >= 3
    assert [t for t, _ in published] == [f"fleet/model/expert-1/{i}" for i in range(len(published))]
    assert all(len(p) <= MAX_MESSAGE_BYTES for _, p in published)
    reassembler = Reassembler()
    results = []
    for topic, data in published:
        chunk = decode(data)
        assert isinstance(chunk, MessageChunk)
        assert topic.endswith(f"/{chunk.index}")
        assert (chunk.key, chunk.whole_type) == ("expert-1", "part-version")
        results.append(reassembler.add(chunk, 0.0))
    assembled = results[-1]
    assert assembled is not None
    assert assembled.data == payload
    assert same(assembled.message, message)


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, int, bool]] = []

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        self.published.append((topic, payload, qos, retain))


async def test_egress_publishes_a_large_version_as_retained_chunks_and_its_gate_row_whole() -> None:
    publisher, metrics = FakePublisher(), ServiceMetrics("gateway")
    handler = EgressHandler(TABLE, publisher, metrics)
    message = version(MAX_MESSAGE_BYTES + 4096)
    raw = encode(message, max_bytes=MAX_ASSEMBLED_BYTES)
    record = InboundRecord(
        topic=TABLE.name(Topic.MODEL), partition=0, offset=7, key=b"expert-1", message=message,
        raw=raw,
    )  # fmt: skip
    assert await handler.handle(record) == []
    *chunks, gate = publisher.published
    assert len(chunks) >= 3
    assert [(t, q, r) for t, _, q, r in chunks] == [
        (f"fleet/model/expert-1/{i}", 1, True) for i in range(len(chunks))
    ]
    assert b"".join(decode(p).data for _, p, _, _ in chunks) == raw  # type: ignore[attr-defined]
    assert gate[0] == "fleet/gate/expert-1"
    assert gate[3] is True
    assert gate[1] == encode(dataclasses.replace(message, tensors=gate_row(message.tensors)))
    assert metrics.get(Outcome.PUBLISHED) == len(chunks) + 1
