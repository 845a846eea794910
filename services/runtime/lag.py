"""Partition ends as the consumer's last fetch saw them, for the lag metric.

`brokers.kafka.KafkaConsumer` does not expose aiokafka's high watermarks (the `Consumer`
protocol is getmany/commit only), so this reads them through a `highwaters()` method where a
consumer has one, else from the aiokafka consumer it wraps; a consumer with neither (test
fakes) reports no ends, and the runtime then reports no lag.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from brokers.kafka import Partition


def highwaters(consumer: Any, partitions: Iterable[Partition]) -> Mapping[tuple[str, int], int]:
    """(topic, partition) → the end offset last seen, for the partitions it knows."""
    method = getattr(consumer, "highwaters", None)
    if callable(method):
        ends = method()
        return dict(ends) if isinstance(ends, Mapping) else {}
    inner = getattr(consumer, "_consumer", None)
    highwater = getattr(inner, "highwater", None)
    if not callable(highwater):
        return {}
    from aiokafka.structs import TopicPartition  # the wrapped client's own key type

    out: dict[tuple[str, int], int] = {}
    for p in partitions:
        try:
            end = highwater(TopicPartition(p.topic, p.partition))
        except (AssertionError, KeyError, AttributeError):  # not (or no longer) assigned
            continue
        if isinstance(end, int):
            out[(p.topic, p.partition)] = end
    return out
