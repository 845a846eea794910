"""The gateway's per-device token buckets and drop sampling (injected clock)."""

from __future__ import annotations

from typing import cast

import pytest

from brokers.kafka import Producer
from brokers.mqtt import MqttMessage, MqttSession
from schemas import DeviceStatus, decode, encode
from schemas.topics import Topic, TopicTable
from services.gateway.app import Ingress
from services.gateway.logic import InboundKind, check_retained
from services.gateway.ratelimit import Admission, DeviceRateLimiter, RateLimit, TokenBucket
from services.metrics import ServiceMetrics
from services.runtime import Backoff


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(RateLimit(rate_per_s=2.0, burst=3.0), now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.4)  # 0.8 tokens
    assert bucket.take(0.5)  # 1 token
    assert not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


def test_a_clock_stepping_back_adds_no_tokens() -> None:
    bucket = TokenBucket(RateLimit(rate_per_s=1.0, burst=1.0), now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


def test_devices_have_their_own_buckets() -> None:
    clock = Clock()
    limiter = DeviceRateLimiter(RateLimit(rate_per_s=1.0, burst=2.0), clock)
    assert [limiter.admit("a") for _ in range(2)] == [Admission.PASS] * 2
    assert limiter.admit("a") is not Admission.PASS
    assert limiter.admit("b") is Admission.PASS  # a's flood does not touch b


def test_drops_are_counted_with_one_dead_letter_per_interval() -> None:
    clock = Clock()
    limiter = DeviceRateLimiter(RateLimit(rate_per_s=1.0, burst=1.0, letter_interval_s=10.0), clock)
    assert limiter.admit("a") is Admission.PASS
    flood = [limiter.admit("a") for _ in range(100)]
    assert flood[0] is Admission.DROP_AND_LETTER
    assert set(flood[1:]) == {Admission.DROP}
    assert limiter.dropped == 100
    clock.now += 10.0  # a new interval: one more letter (and 10 tokens' worth, capped at 1)
    assert limiter.admit("a") is Admission.PASS
    assert limiter.admit("a") is Admission.DROP_AND_LETTER
    assert limiter.admit("a") is Admission.DROP


def test_idle_buckets_are_forgotten() -> None:
    clock = Clock()
    limiter = DeviceRateLimiter(RateLimit(rate_per_s=1.0, burst=2.0), clock)
    for i in range(50):
        limiter.admit(f"dev-{i}")
    assert len(limiter) == 50
    clock.now += 3.0  # longer than a full refill (2 s)
    assert limiter.admit("dev-x") is Admission.PASS
    assert len(limiter) == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"rate_per_s": 0.0, "burst": 1.0}, {"rate_per_s": 1.0, "burst": 0.5},
     {"rate_per_s": 1.0, "burst": 1.0, "letter_interval_s": 0.0}],
)  # fmt: skip
def test_bad_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RateLimit(**kwargs)


def test_only_status_may_be_retained() -> None:
    assert check_retained(InboundKind.STATUS, True, "d") is None
    assert check_retained(InboundKind.UPDATE, False, "d") is None
    for kind in (InboundKind.UPDATE, InboundKind.TELEMETRY):
        reject = check_retained(kind, True, "d")
        assert reject is not None
        assert (reject.error, reject.device) == ("RetainedPublish", "d")


# -- the ingress applies both, before routing ------------------------------------------------


def _ingress(limiter: DeviceRateLimiter | None) -> Ingress:
    return Ingress(
        session=cast(MqttSession, None),  # `_records` never touches the session or producer
        producer=cast(Producer, None),
        table=TABLE,
        metrics=ServiceMetrics("gateway"),
        backoff=Backoff(0.1, 1.0),
        window=8,
        clock=lambda: 5.0,
        limiter=limiter,
    )


def _message(kind: str, payload: bytes, *, retain: bool = False, mid: int = 1) -> MqttMessage:
    topic = f"{TABLE.mqtt_root}/dev-1/{kind}"
    return MqttMessage(topic=topic, payload=payload, qos=1, retain=retain, mid=mid, connection=0)


TABLE = TopicTable(namespace="t", mqtt_root="fleet")
STATUS = encode(
    DeviceStatus(message_id="s", device_id="dev-1", round=0, timestamp=1.0, online=True)
)


def test_a_flood_is_dropped_with_one_dead_letter() -> None:
    clock = Clock()
    limiter = DeviceRateLimiter(RateLimit(rate_per_s=1.0, burst=2.0, letter_interval_s=60.0), clock)
    ingress = _ingress(limiter)
    outputs = [ingress._records(_message("status", STATUS, mid=i)) for i in range(50)]
    forwarded = [o for o in outputs if o and o[0].topic == TABLE.name(Topic.TELEMETRY)]
    letters = [o for o in outputs if o and o[0].topic == TABLE.name(Topic.DEAD_LETTER)]
    assert len(forwarded) == 2
    assert len(letters) == 1
    assert decode(letters[0][0].value).error == "RateLimited"  # type: ignore[attr-defined]
    assert sum(1 for o in outputs if o == []) == 47
    assert ingress.notes["rate_limited"] == 48


def test_a_retained_update_is_refused_and_a_retained_status_is_not() -> None:
    ingress = _ingress(None)
    (letter,) = ingress._records(_message("update", b"anything", retain=True))
    assert letter.topic == TABLE.name(Topic.DEAD_LETTER)
    assert decode(letter.value).error == "RetainedPublish"  # type: ignore[attr-defined]
    (status,) = ingress._records(_message("status", STATUS, retain=True))
    assert status.topic == TABLE.name(Topic.TELEMETRY)
    assert ingress.notes["retained_rejected"] == 1
