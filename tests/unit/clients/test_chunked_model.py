"""A device and a model whose expert parts are over one MQTT message: part versions come as
retained chunks and are reassembled and checked whole; large updates go up as chunked
`PartUpdate`s; parts no longer listened to are forgotten."""

from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
import pytest

from clients.inbound import ChunkHeld, Drop, DropReason, InboundFilter
from clients.model_store import ModelStore, Readiness
from clients.uploads import update_payloads
from moe.model import MoEConfig, init_weights
from moe.parts import SHARED
from moe.tensors import PartTensors
from schemas import MessageChunk, ModelUpdate, PartPayload, PartUpdate, PartVersion, decode, encode
from schemas.chunks import Reassembler, split
from schemas.limits import CHUNK_BYTES, MAX_ASSEMBLED_BYTES, MAX_MESSAGE_BYTES
from schemas.messages import split_update
from schemas.topics import TopicTable
from tests.unit.clients.helpers import part_version
from tests.unit.schemas.helpers import same

pytestmark = pytest.mark.timeout(30)

TABLE = TopicTable(namespace="unit", mqtt_root="fleet")
# An expert of 2 × 16384 × 64 float32 weights: a little over 8 MiB.
LARGE = MoEConfig(num_experts=2, expert_hidden=16384)
SMALL = MoEConfig(num_experts=2)


@cache
def weights(config: MoEConfig = LARGE) -> dict[str, PartTensors]:
    return dict(init_weights(config, 5))


def device_filter() -> InboundFilter:
    return InboundFilter(TABLE, "dev-00003", LARGE)


def chunked(version: PartVersion, key: str | None = None) -> list[tuple[str, bytes]]:
    """(topic, payload) of each chunk of `version`, as the gateway publishes them."""
    data = encode(version, max_bytes=MAX_ASSEMBLED_BYTES)
    topic = f"fleet/model/{version.part}"
    chunks = split(data, version, key=version.part if key is None else key)
    return [(f"{topic}/{c.index}", encode(c)) for c in chunks]


def test_an_expert_of_the_large_model_is_over_one_message() -> None:
    version = part_version("expert-1", 2, weights()["expert-1"])
    assert len(encode(version, max_bytes=MAX_ASSEMBLED_BYTES)) > MAX_MESSAGE_BYTES


def test_the_chunks_of_a_large_part_version_are_held_then_the_version_is_checked_whole() -> None:
    inbound = device_filter()
    version = part_version("expert-1", 2, weights()["expert-1"])
    published = chunked(version)
    assert len(published) >= 3
    got = [inbound.classify(topic, payload, 10.0) for topic, payload in published]
    assert got[:-1] == [ChunkHeld("expert-1")] * (len(published) - 1)
    whole = got[-1]
    assert isinstance(whole, PartVersion)
    assert same(whole, version)
    # Retained chunks delivered again (a resubscription) make the version again.
    again = [inbound.classify(topic, payload, 20.0) for topic, payload in published]
    assert isinstance(again[-1], PartVersion)
    assert again[-1].version == 2


def test_a_chunk_whose_key_is_another_part_is_dropped() -> None:
    version = part_version("expert-0", 2, weights()["expert-0"])
    data = encode(version, max_bytes=MAX_ASSEMBLED_BYTES)
    chunk = split(data, version, key="expert-0")[0]
    got = device_filter().classify("fleet/model/expert-1/0", encode(chunk), 1.0)
    assert isinstance(got, Drop)
    assert got.reason is DropReason.WRONG_TYPE
    assert got.detail


def test_a_whole_of_another_part_under_the_right_key_is_dropped_when_complete() -> None:
    version = part_version("expert-0", 2, weights()["expert-0"])
    inbound = device_filter()
    published = chunked(version, key="expert-1")
    got = [inbound.classify(t.replace("expert-0", "expert-1"), p, 1.0) for t, p in published]
    assert got[:-1] == [ChunkHeld("expert-1")] * (len(published) - 1)
    last = got[-1]
    assert isinstance(last, Drop)
    assert last.reason is DropReason.UNKNOWN_PART


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("fleet/model/expert-1/0", b"\xc1\x00garbage", DropReason.UNDECODABLE),
        ("fleet/model/expert-1/0", b"", DropReason.UNDECODABLE),
        ("fleet/model/expert-1/0", b"\x00" * (MAX_MESSAGE_BYTES + 1), DropReason.UNDECODABLE),
        ("fleet/model/expert-7/0", b"\xc1", DropReason.UNKNOWN_PART),
    ],
    ids=["garbage", "empty", "oversize", "no such part"],
)
def test_bad_bytes_on_a_chunk_topic_are_dropped(
    topic: str, payload: bytes, reason: DropReason
) -> None:
    got = device_filter().classify(topic, payload, 1.0)
    assert isinstance(got, Drop)
    assert got.reason is reason
    assert got.detail


def test_a_whole_message_on_a_chunk_topic_is_the_wrong_type() -> None:
    small = part_version("expert-1", 2, weights(SMALL)["expert-1"])
    got = InboundFilter(TABLE, "dev-00003", SMALL).classify("fleet/model/expert-1/0", encode(small))
    assert isinstance(got, Drop)
    assert got.reason is DropReason.WRONG_TYPE


def test_chunks_whose_whole_fails_its_digest_are_dropped_at_the_last() -> None:
    version = part_version("expert-1", 2, weights()["expert-1"])
    data = encode(version, max_bytes=MAX_ASSEMBLED_BYTES)
    chunks = split(data, version, key="expert-1")
    chunks[0] = dataclasses.replace(chunks[0], data=bytes(len(chunks[0].data)))
    inbound = device_filter()
    got = [inbound.classify(f"fleet/model/expert-1/{c.index}", encode(c), 1.0) for c in chunks]
    assert got[:-1] == [ChunkHeld("expert-1")] * (len(chunks) - 1)
    last = got[-1]
    assert isinstance(last, Drop)
    assert last.reason is DropReason.UNDECODABLE
    assert "SHA-256" in last.detail


# --- uploads -------------------------------------------------------------------------------------


def model_update(
    config: MoEConfig = LARGE, experts: tuple[str, ...] = ("expert-0",)
) -> ModelUpdate:
    parts = tuple(
        PartPayload(part=p, base_version=1, weight=4.0, loss=0.5, tensors=weights(config)[p])
        for p in (SHARED, *experts)
    )
    return ModelUpdate(
        message_id="up-dev-00003-r5",
        device_id="dev-00003",
        round=5,
        timestamp=9.0,
        num_samples=40,
        train_seconds=1.5,
        parts=parts,
    )


def reassemble(payloads: tuple[bytes, ...]) -> list[tuple[str, PartUpdate]]:
    """(key, whole) of every whole the payloads carry, in the order they complete."""
    reassembler = Reassembler()
    out: list[tuple[str, PartUpdate]] = []
    for payload in payloads:
        chunk = decode(payload)
        assert isinstance(chunk, MessageChunk)
        assembled = reassembler.add(chunk, 0.0)
        if assembled is not None:
            assert isinstance(assembled.message, PartUpdate)
            out.append((chunk.key, assembled.message))
    assert len(reassembler) == 0
    return out


def test_a_large_update_goes_as_the_chunks_of_its_part_updates() -> None:
    update = model_update(experts=("expert-0", "expert-1"))
    payloads = update_payloads(update)
    assert all(len(p) <= MAX_MESSAGE_BYTES for p in payloads)
    wholes = reassemble(payloads)
    expected = split_update(update)
    assert [key for key, _ in wholes] == [SHARED, "expert-0", "expert-1"]
    assert len(wholes) == len(expected)
    for (_, got), want in zip(wholes, expected, strict=True):
        assert same(got, want)
    # `shared` is small: one chunk; each expert several.
    counts = [c.count for c in map(decode, payloads) if isinstance(c, MessageChunk)]
    assert counts.count(1) == 1
    assert len(payloads) == 1 + 2 * -(
        -len(encode(expected[1], max_bytes=MAX_ASSEMBLED_BYTES)) // CHUNK_BYTES
    )


def test_a_small_update_is_one_payload() -> None:
    update = model_update(SMALL)
    assert update_payloads(update) == (encode(update),)


def test_an_update_over_max_bytes_chunks_every_part() -> None:
    update = model_update(SMALL, experts=("expert-0", "expert-1"))
    payloads = update_payloads(update, max_bytes=len(encode(update)) - 1)
    chunks = [decode(p) for p in payloads]
    assert all(isinstance(c, MessageChunk) and c.count == 1 for c in chunks)  # small parts
    wholes = reassemble(payloads)
    for (key, got), want in zip(wholes, split_update(update), strict=True):
        assert key == want.payload.part
        assert same(got, want)


# --- the store ----------------------------------------------------------------------------------


def test_forget_drops_the_versions_held_of_some_parts() -> None:
    t = {"w": np.zeros(2, dtype=np.float32)}
    store = ModelStore()
    for part in (SHARED, "expert-0", "expert-1"):
        store.offer(part_version(part, 3, t))
    store.forget(["expert-0", "expert-5"])  # a part not held is no error
    assert store.versions() == {SHARED: 3, "expert-1": 3}
    assert store.readiness({"expert-0": 3}, ["expert-0"]) is Readiness.WAITING
    store.forget([])
    store.forget(iter([SHARED]))
    assert store.versions() == {"expert-1": 3}
    with pytest.raises(KeyError):
        store.take([SHARED])


def test_close_drops_the_chunks_held() -> None:
    inbound = device_filter()
    version = part_version("expert-1", 2, weights()["expert-1"])
    published = chunked(version)
    for topic, payload in published[:-1]:
        assert inbound.classify(topic, payload, 10.0) == ChunkHeld("expert-1")
    inbound.close()
    # The earlier chunks went with their temporary file: the last one alone makes nothing.
    assert inbound.classify(*published[-1], 10.0) == ChunkHeld("expert-1")
    inbound.close()  # else the file of that last chunk's whole is left open
