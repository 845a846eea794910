"""The load monitor's state machine, pure: no broker, no clock (time is passed in), no I/O.

It keeps `moe.load.ExpertLoadState` through the round protocol's events:

    RoundOpened(r)    on_assignment with the round's assignment per expert: its
                      `expected_parts` (the devices assigned to each part, i.e. the column sums
                      of the assignment the matcher published as Assignments)
    PartVersion       an expert part's new version: its (contributors, samples) are kept by
                      version until a RoundClosed names it
    RoundClosed(r)    on_part_closed(expert, contributors, samples) for every expert version the
                      round produced with contributors > 0 (those up to the version
                      RoundClosed.model_versions names), then on_round_closed: one `ClosedRound`
                      to publish

Why RoundOpened rather than the Assignment records: both count the same, but RoundOpened travels
on the 1-partition `rounds` with the RoundClosed of its round, so the count is complete and in
order however the topics are read; Assignments come from another topic, and a batch hands records
out partition by partition (in a backlog after a restart, a round's RoundClosed can be read
before some of its Assignments, which would then be lost to the count).

Why the versions wait for RoundClosed: a PartVersion and the RoundClosed of its round come on
different topics too, so the RoundClosed can be read first. RoundClosed names every part's
version after the round: the round is folded once the monitor holds those versions, and the
ROUNDS events after it wait meanwhile; after `close_wait_s` without them it is folded anyway (a
version arriving later is folded with the next round's close). Genesis: RoundClosed(0) is folded
like any other (the simulation does the same), so round 1 starts with `rounds_closed == 1`.

Every transition is idempotent on redelivery: a version is kept once, a round opened and
closed once (by number). `to_dict` / `from_dict` give the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from moe.load import ExpertLoadState, on_assignment, on_part_closed, on_round_closed
from moe.parts import expert_index
from schemas.messages import PartVersion, RoundClosed, RoundOpened

CHECKPOINT_FORMAT = 1
_LOAD_ARRAYS = (
    "assigned_clients",
    "accepted_updates",
    "clients_ewma",
    "samples_routed",
    "rounds_since_update",
)


class Note(StrEnum):
    """What one input did (one counter each in the app)."""

    REPEATED = "repeated"  # seen already (a redelivery, a re-published event, version 0)
    STALE = "stale"  # an event of a round already past
    VERSION_KEPT = "version_kept"
    NOT_EXPERT = "not_an_expert_part"
    OPENED = "round_opened"
    CLOSED = "round_closed"
    WAITING = "round_waits_for_versions"
    HELD = "event_held"  # a ROUNDS event behind a round that waits for its versions
    CLOSE_TIMEOUT = "round_closed_without_versions"


@dataclass(frozen=True, slots=True)
class ClosedRound:
    """A round whose load was folded: publish `load` as the ExpertLoad of `round`."""

    round: int
    load: ExpertLoadState


@dataclass(frozen=True, slots=True)
class _Waiting:
    round: int
    versions: dict[str, int]  # RoundClosed.model_versions
    since: float


@dataclass(frozen=True, slots=True)
class _Held:
    closed: bool  # RoundClosed (else RoundOpened)
    round: int
    parts: dict[str, int]  # RoundClosed.model_versions / RoundOpened.expected_parts


class LoadMonitor:
    """The load state of one deployment (one instance: its input `rounds` has one partition).

    Args:
        num_experts: E.
        alpha: EWMA weight of a closing round in `on_round_closed`.
        close_wait_s: how long a RoundClosed waits for the part versions it names.
    """

    def __init__(self, num_experts: int, *, alpha: float = 0.5, close_wait_s: float = 30.0) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        self.num_experts = num_experts
        self.alpha = alpha
        self.close_wait_s = close_wait_s
        self.load = ExpertLoadState.empty(num_experts)
        self.round = -1  # the latest round opened or closed
        self.open = False  # whether `round` is open
        self.folded = dict.fromkeys(range(num_experts), 0)  # expert → last version folded
        self.versions: dict[int, dict[int, tuple[int, float]]] = {}  # expert → version → stats
        self.waiting: _Waiting | None = None
        self.held: list[_Held] = []  # ROUNDS events behind the round that waits

    # -- inputs ------------------------------------------------------------------------------

    def on_part_version(self, message: PartVersion, now: float) -> tuple[Note, list[ClosedRound]]:
        """Keep an expert version's stats; may complete a round that waits for it.

        Raises:
            ValueError: an expert index out of range 0..E-1.
        """
        e = expert_index(message.part)
        if e is None:
            return Note.NOT_EXPERT, []
        if e >= self.num_experts:
            raise ValueError(f"{message.part} is out of range 0..{self.num_experts - 1}")
        kept = self.versions.setdefault(e, {})
        if message.version <= self.folded[e] or message.version in kept:
            return Note.REPEATED, []
        kept[message.version] = (message.contributors, float(message.samples))
        if self.waiting is not None and not self._missing(self.waiting.versions):
            return Note.VERSION_KEPT, self._finish(self.waiting, now)
        return Note.VERSION_KEPT, []

    def on_round_opened(self, message: RoundOpened) -> Note:
        """Open round r and count its assignment per expert."""
        if self.waiting is not None:
            self.held.append(_Held(False, message.round, dict(message.expected_parts)))
            return Note.HELD
        return self._open(message.round, dict(message.expected_parts))

    def on_round_closed(self, message: RoundClosed, now: float) -> tuple[Note, list[ClosedRound]]:
        """Fold round r's load once it holds the versions it names (see the module docs)."""
        if self.waiting is not None:
            if message.round == self.waiting.round:
                return Note.REPEATED, []
            self.held.append(_Held(True, message.round, dict(message.model_versions)))
            return Note.HELD, []
        return self._close(message.round, dict(message.model_versions), now)

    def on_tick(self, now: float) -> tuple[Note | None, list[ClosedRound]]:
        """Fold a round that waited `close_wait_s` for its versions without them."""
        if self.waiting is None or now - self.waiting.since < self.close_wait_s:
            return None, []
        return Note.CLOSE_TIMEOUT, self._finish(self.waiting, now)

    # -- transitions -------------------------------------------------------------------------

    def _open(self, r: int, expected_parts: Mapping[str, int]) -> Note:
        if r < self.round or (r == self.round and not self.open):
            return Note.STALE
        if r == self.round:
            return Note.REPEATED
        counts = np.zeros(self.num_experts, dtype=np.int64)
        for e, n in self._by_expert(expected_parts).items():
            counts[e] = n
        # The assignment's column sums as a matrix `on_assignment` sums again.
        rows = np.arange(int(counts.max(initial=0)))[:, None] < counts[None, :]
        self.load = on_assignment(self.load, rows)
        self.round, self.open = r, True
        return Note.OPENED

    def _close(
        self, r: int, versions: dict[str, int], now: float
    ) -> tuple[Note, list[ClosedRound]]:
        if r < self.round or (r == self.round and not self.open):
            return Note.STALE, []
        waiting = _Waiting(r, versions, now)
        if self._missing(versions):
            self.waiting = waiting
            return Note.WAITING, []
        return Note.CLOSED, self._finish(waiting, now)

    def _by_expert(self, parts: Mapping[str, int]) -> dict[int, int]:
        """A map by part id → by expert index (the shared part and experts ≥ E left out)."""
        out: dict[int, int] = {}
        for part, value in parts.items():
            e = expert_index(part)
            if e is not None and e < self.num_experts:
                out[e] = value
        return out

    def _missing(self, versions: Mapping[str, int]) -> dict[int, int]:
        """The named versions past the folded ones that have not arrived."""
        return {
            e: v
            for e, v in self._by_expert(versions).items()
            if v > self.folded[e] and v not in self.versions.get(e, {})
        }

    def _finish(self, waiting: _Waiting, now: float) -> list[ClosedRound]:
        """Fold the round `waiting` describes, then the ROUNDS events held behind it."""
        self.waiting = None
        named = self._by_expert(waiting.versions)
        for e in range(self.num_experts):
            kept = self.versions.get(e, {})
            # Up to the version named (what arrived of it); for a part not named, what arrived.
            upto = named.get(e, max(kept, default=0))
            for version in sorted(v for v in kept if v <= upto):
                contributors, samples = kept.pop(version)
                if contributors > 0:
                    self.load = on_part_closed(self.load, e, contributors, samples)
                self.folded[e] = version
        self.load = on_round_closed(self.load, self.alpha)
        self.round, self.open = waiting.round, False
        closed = [ClosedRound(waiting.round, self.load)]
        held, self.held = self.held, []
        for i, event in enumerate(held):
            if self.waiting is not None:  # a held close waits in turn: keep the rest held
                self.held.extend(held[i:])
                break
            if event.closed:
                closed += self._close(event.round, event.parts, now)[1]
            else:
                self._open(event.round, event.parts)
        return closed

    # -- checkpoint --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The whole state as plain data and arrays (`services.checkpoint`)."""
        load = {name: getattr(self.load, name) for name in _LOAD_ARRAYS}
        load["rounds_closed"] = self.load.rounds_closed
        waiting = self.waiting
        return {
            "format": CHECKPOINT_FORMAT,
            "num_experts": self.num_experts,
            "load": load,
            "round": self.round,
            "open": self.open,
            "folded": dict(self.folded),
            "versions": {e: {v: list(s) for v, s in vs.items()} for e, vs in self.versions.items()},
            "waiting": None
            if waiting is None
            else {"round": waiting.round, "versions": waiting.versions, "since": waiting.since},
            "held": [[h.closed, h.round, h.parts] for h in self.held],
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, alpha: float = 0.5, close_wait_s: float = 30.0
    ) -> LoadMonitor:
        """The state `to_dict` gave. Raises ValueError / KeyError / TypeError when malformed."""
        if data.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"unknown load-monitor checkpoint format {data.get('format')!r}")
        monitor = cls(int(data["num_experts"]), alpha=alpha, close_wait_s=close_wait_s)
        load = data["load"]
        monitor.load = ExpertLoadState(
            assigned_clients=np.asarray(load["assigned_clients"]),
            accepted_updates=np.asarray(load["accepted_updates"]),
            clients_ewma=np.asarray(load["clients_ewma"]),
            samples_routed=np.asarray(load["samples_routed"]),
            rounds_since_update=np.asarray(load["rounds_since_update"]),
            rounds_closed=int(load["rounds_closed"]),
        )
        if monitor.load.num_experts != monitor.num_experts:
            raise ValueError("checkpointed load has another number of experts")
        monitor.round = int(data["round"])
        monitor.open = bool(data["open"])
        monitor.folded = {int(e): int(v) for e, v in data["folded"].items()}
        monitor.versions = {
            int(e): {int(v): (int(s[0]), float(s[1])) for v, s in vs.items()}
            for e, vs in data["versions"].items()
        }
        waiting = data["waiting"]
        if waiting is not None:
            versions = {str(p): int(v) for p, v in waiting["versions"].items()}
            monitor.waiting = _Waiting(int(waiting["round"]), versions, float(waiting["since"]))
        monitor.held = [
            _Held(bool(c), int(r), {str(p): int(v) for p, v in parts.items()})
            for c, r, parts in data["held"]
        ]
        return monitor
