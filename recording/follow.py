"""Round-synchronous replay (`--follow-rounds`), pure: which recorded messages go out when.

Recorded telemetry and status name the recording's rounds. A device announces itself for round
k + 1 once it heard RoundClosed(k) (`docs/round-protocol.md`, step 5), so the replay does the
same against the live system: when the live system closes its round r', the recording's next
round k (in order) is emitted as round r' + 1:

- its announcements (telemetry and status of round k) at once, with their recorded spacing
  from the round's first announcement (divided by the speed);
- its updates (`ModelUpdate` of round k) when the live round r' + 1 opened (its first
  assignment was seen), each at its recorded delay after round k's first recorded assignment
  (or, without recorded assignments, after the round's last announcement), so an update that
  was in time or late stays so.

Every emitted message gets round r' + 1 (through the codec, `recording.rewrite`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from recording.format import Record

ANNOUNCE_TYPES = frozenset({"telemetry", "status"})
UPDATE_TYPES = frozenset({"update"})


@dataclass(frozen=True, slots=True)
class Timed:
    """One message to emit `delay_s` after its phase began, as live round `round`."""

    record: Record
    delay_s: float
    round: int


@dataclass(frozen=True, slots=True)
class RecordedRound:
    """One recorded round's device messages and its reference times (ns)."""

    round: int
    announcements: tuple[Record, ...]
    updates: tuple[Record, ...]
    assigned_ns: int | None  # the first recorded assignment of the round

    def announce(self, live_round: int, speed: float = 1.0) -> list[Timed]:
        """The announcements, as live round `live_round`."""
        if not self.announcements:
            return []
        t0 = self.announcements[0].t_ns
        return [Timed(r, (r.t_ns - t0) / 1e9 / speed, live_round) for r in self.announcements]

    def upload(self, live_round: int, speed: float = 1.0) -> list[Timed]:
        """The updates, timed from the round's open (its first assignment)."""
        if not self.updates:
            return []
        if self.assigned_ns is not None:
            ref = self.assigned_ns
        elif self.announcements:
            ref = self.announcements[-1].t_ns
        else:
            ref = self.updates[0].t_ns
        return [Timed(r, max(r.t_ns - ref, 0) / 1e9 / speed, live_round) for r in self.updates]


def recorded_rounds(records: Iterable[Record]) -> list[RecordedRound]:
    """The recording's rounds in order, from its device messages (arrival order kept)."""
    announce: dict[int, list[Record]] = defaultdict(list)
    updates: dict[int, list[Record]] = defaultdict(list)
    assigned: dict[int, int] = {}
    for r in records:
        if r.round is None or r.type is None:
            continue
        if r.type in ANNOUNCE_TYPES:
            announce[r.round].append(r)
        elif r.type in UPDATE_TYPES:
            updates[r.round].append(r)
        elif r.type == "assignment":
            assigned[r.round] = min(assigned.get(r.round, r.t_ns), r.t_ns)
    rounds = sorted(set(announce) | set(updates))
    return [
        RecordedRound(
            k,
            tuple(sorted(announce[k], key=lambda r: r.t_ns)),
            tuple(sorted(updates[k], key=lambda r: r.t_ns)),
            assigned.get(k),
        )
        for k in rounds
    ]


PLAYED_TYPES = frozenset({"round-opened", "round-closed", "assignment"})


def played_rounds(
    records: Iterable[Record], rounds: Sequence[RecordedRound]
) -> list[RecordedRound]:
    """The recorded rounds a replay or a what-if goes through: rounds some device announced
    itself for (telemetry) that the recorded system also played (a RoundOpened, RoundClosed or
    Assignment of it was recorded), so the announcements after the run's last round and the
    status-only rounds (connects, goodbyes) are left out. A recording without any of those
    (a trace import, a devices-only tap) keeps every round with telemetry."""
    played = {r.round for r in records if r.type in PLAYED_TYPES and r.round is not None}
    announced = [rr for rr in rounds if any(r.type == "telemetry" for r in rr.announcements)]
    return [rr for rr in announced if rr.round in played] if played else announced


class RoundFollower:
    """Maps live round closes to recorded rounds (see the module docstring)."""

    def __init__(self, rounds: Sequence[RecordedRound], *, speed: float = 1.0) -> None:
        if not speed > 0:
            raise ValueError("speed must be > 0")
        self._rounds = list(rounds)
        self._speed = speed
        self._next = 0
        self._live: dict[int, RecordedRound] = {}  # live round -> the recorded one it replays
        self._closed: set[int] = set()
        self._opened: set[int] = set()

    @property
    def done(self) -> bool:
        """Every recorded round was announced."""
        return self._next >= len(self._rounds)

    @property
    def mapping(self) -> dict[int, int]:
        """Live round -> recorded round, so far."""
        return {live: rec.round for live, rec in self._live.items()}

    def on_round_closed(self, live_round: int) -> list[Timed]:
        """The live system closed `live_round`: announce the next recorded round as
        `live_round + 1` (once per live round; nothing when the recording is used up)."""
        if live_round in self._closed or self.done:
            return []
        self._closed.add(live_round)
        recorded = self._rounds[self._next]
        self._next += 1
        self._live[live_round + 1] = recorded
        return recorded.announce(live_round + 1, self._speed)

    def on_round_opened(self, live_round: int) -> list[Timed]:
        """The live round `live_round` opened: the updates of the recorded round it replays."""
        recorded = self._live.get(live_round)
        if recorded is None or live_round in self._opened:
            return []
        self._opened.add(live_round)
        return recorded.upload(live_round, self._speed)
