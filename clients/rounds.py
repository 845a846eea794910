"""Which rounds a device has seen closed and which assignments it takes, pure.

- A RoundClosed is acted on once: a repeat (the retained message again, a redelivery) or an
  older round is ignored.
- An assignment is taken at most once per round, whatever happens to it after (trained,
  waiting for the model, given up): a redelivered or repeated assignment never trains twice.
- An assignment of a round the device already heard closed is stale: its update could only be
  late, so the device does not train for it. (An assignment that arrives before its round's
  RoundClosed is taken even when the device is slow: the aggregator acks it "late".)
- An assignment without experts has nothing to train (as in the in-process simulation).
"""

from __future__ import annotations

from enum import StrEnum

from schemas.messages import Assignment


class Take(StrEnum):
    """What to do with an assignment."""

    TRAIN = "train"
    REPEATED = "repeated"  # its round's assignment was taken already
    STALE = "stale"  # its round is closed
    EMPTY = "empty"  # no experts


class RoundBook:
    """One device's rounds (see the module docstring)."""

    def __init__(self) -> None:
        self.last_closed = -1
        self._taken: set[int] = set()

    def close(self, round_: int) -> bool:
        """Record RoundClosed(`round_`); False when it is not newer than the last one."""
        if round_ <= self.last_closed:
            return False
        self.last_closed = round_
        return True

    def take(self, assignment: Assignment) -> Take:
        """Whether to train for `assignment` (recorded: a second call for its round repeats)."""
        round_ = assignment.round
        if round_ in self._taken:
            return Take.REPEATED
        if round_ <= self.last_closed:
            return Take.STALE
        self._taken.add(round_)
        return Take.TRAIN if assignment.experts else Take.EMPTY
