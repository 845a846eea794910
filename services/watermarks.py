"""Which input records a service has already folded into its state: the last offset per partition.

A service that rebuilds its state by replaying its inputs (`brokers.rebuild.replay_topics`) and
then consumes them in its group from the committed offsets meets the records between the two
twice (the whole topic, for a group without commits). Folding one twice must not move the state
back: a stale `ProfileSnapshot` over a newer one, a round event already past. `Watermarks`
notes the highest offset folded per (topic, partition), for the replay and the live records
alike, and tells which records are old news. Note a record only once it was folded (or
refused for good), so a record the runtime retries is not mistaken for a duplicate.
"""

from __future__ import annotations


class Watermarks:
    """The highest offset folded per (topic, partition)."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, int], int] = {}

    def seen(self, topic: str, partition: int, offset: int) -> bool:
        """True when a record at or past `offset` of this partition was folded already."""
        return offset <= self._last.get((topic, partition), -1)

    def note(self, topic: str, partition: int, offset: int) -> None:
        """Record that the record at `offset` was folded."""
        key = (topic, partition)
        self._last[key] = max(offset, self._last.get(key, -1))

    def last(self, topic: str, partition: int) -> int | None:
        """The highest offset folded from one partition, None when none was."""
        return self._last.get((topic, partition))
