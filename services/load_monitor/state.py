"""The load monitor's state machine, pure: no broker, no clock (time is passed in), no I/O.

It keeps `moe.load.ExpertLoadState` through the round protocol's events:

    RoundOpened(r)    on_assignment with the round's assignment per expert: its
                      `expected_parts` (the devices assigned to each part, i.e. the column sums
                      of the assignment the matcher published as Assignments)
    PartVersion       an expert part's close: its (contributors, samples) are kept by
                      (version, round) until the RoundClosed of its round
    PartClosed(r)     an expert part of round r closed with `applied` > 0: round r's close waits
                      for that close's PartVersion (version, r)
    RoundClosed(r)    on_part_closed(expert, contributors, samples) for every expert close of
                      rounds <= r with contributors > 0 (versions up to the one
                      RoundClosed.model_versions names), then on_round_closed: one `ClosedRound`
                      to publish

Why RoundOpened rather than the Assignment records: both count the same, but RoundOpened travels
on the 1-partition `rounds` with the RoundClosed of its round, so the count is complete and in
order however the topics are read; Assignments come from another topic, and a batch hands records
out partition by partition (in a backlog after a restart, a round's RoundClosed can be read
before some of its Assignments, which would then be lost to the count).

Why a close is keyed by (version, round), not by version: the aggregator publishes a PartVersion
at every close of a part, and a close whose applied updates routed no samples to the expert
(total weight 0) makes no new version: it re-publishes the part's current version with this
round's contributors. `moe.load.on_part_closed` counts it all the same (accepted updates, the
expert's `rounds_since_update` back to 0), as the in-process simulation does for every part with
applied updates; keyed by version alone it would pass for a redelivery of the old close (the
first cause of bus-vs-simulation divergence measured: issue 4 item 4).

Why the closes wait for RoundClosed: a PartVersion and the RoundClosed of its round come on
different topics, so the RoundClosed can be read first. The round is folded once the monitor
holds the closes it needs: the versions RoundClosed.model_versions names, and the close of each
PartClosed of the round with applied > 0 (PartClosed travels on `rounds` before the RoundClosed;
it is what tells a close without a new version apart). The ROUNDS events after it wait
meanwhile; after `close_wait_s` without them it is folded anyway (a close arriving later is
folded with the next round's close). Genesis: RoundClosed(0) is folded like any other (the
simulation does the same), so round 1 starts with `rounds_closed == 1`.

Every transition is idempotent on redelivery: a close is kept once, a round opened and closed
once (by number). `to_dict` / `from_dict` give the checkpoint (format 2; format 1, keyed by
version alone, is read too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from moe.load import ExpertLoadState, on_assignment, on_part_closed, on_round_closed
from moe.parts import expert_index
from schemas.messages import PartClosed, PartVersion, RoundClosed, RoundOpened

CHECKPOINT_FORMAT = 2
_FORMAT_BY_VERSION = 1  # closes keyed by version alone (read, never written)
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
    CLOSE_NOTED = "part_close_noted"  # a PartClosed with applied updates: its close is awaited
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


Close = tuple[int, int]
"""An expert part's close: (version, round); ordered as the closes of one part come."""


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
        # expert → the last close folded; genesis (version 0, round 0) counts as folded.
        self.folded: dict[int, Close] = dict.fromkeys(range(num_experts), (0, 0))
        self.versions: dict[int, dict[Close, tuple[int, float]]] = {}  # expert → close → stats
        self.closes: dict[int, dict[int, int]] = {}  # round → expert → version (applied > 0)
        self.waiting: _Waiting | None = None
        self.held: list[_Held] = []  # ROUNDS events behind the round that waits

    # -- inputs ------------------------------------------------------------------------------

    def on_part_version(self, message: PartVersion, now: float) -> tuple[Note, list[ClosedRound]]:
        """Keep an expert close's stats; may complete a round that waits for it.

        Raises:
            ValueError: an expert index out of range 0..E-1.
        """
        e = expert_index(message.part)
        if e is None:
            return Note.NOT_EXPERT, []
        if e >= self.num_experts:
            raise ValueError(f"{message.part} is out of range 0..{self.num_experts - 1}")
        kept = self.versions.setdefault(e, {})
        close = (message.version, message.round)
        if close <= self.folded[e] or close in kept:
            return Note.REPEATED, []
        kept[close] = (message.contributors, float(message.samples))
        waiting = self.waiting
        if waiting is not None and not self._missing(waiting.versions, waiting.round):
            return Note.VERSION_KEPT, self._finish(waiting, now)
        return Note.VERSION_KEPT, []

    def on_part_closed(self, message: PartClosed) -> Note:
        """Note an expert part's close with applied updates: its round waits for its close.

        Raises:
            ValueError: an expert index out of range 0..E-1.
        """
        e = expert_index(message.part)
        if e is None:
            return Note.NOT_EXPERT
        if e >= self.num_experts:
            raise ValueError(f"{message.part} is out of range 0..{self.num_experts - 1}")
        r = message.round
        if r < self.round or (r == self.round and not self.open):
            return Note.STALE  # its round is folded: a late close counts with the next one
        if message.applied == 0:
            return Note.REPEATED  # nothing to wait for
        noted = self.closes.setdefault(r, {})
        if noted.get(e) == message.version:
            return Note.REPEATED
        noted[e] = message.version
        return Note.CLOSE_NOTED

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
        if self._missing(versions, r):
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

    def _missing(self, versions: Mapping[str, int], round_: int) -> dict[int, int]:
        """The closes round `round_` needs that have not arrived, by expert: the named
        versions past the folded ones, and the close of every noted PartClosed of the round."""
        missing: dict[int, int] = {}
        for e, v in self._by_expert(versions).items():
            arrived = {version for version, _ in self.versions.get(e, {})}
            if v > self.folded[e][0] and v not in arrived:
                missing[e] = v
        for e, v in self.closes.get(round_, {}).items():
            close = (v, round_)
            if close > self.folded[e] and close not in self.versions.get(e, {}):
                missing[e] = v
        return missing

    def _finish(self, waiting: _Waiting, now: float) -> list[ClosedRound]:
        """Fold the round `waiting` describes, then the ROUNDS events held behind it."""
        self.waiting = None
        r = waiting.round
        named = self._by_expert(waiting.versions)
        for e in range(self.num_experts):
            kept = self.versions.get(e, {})
            # The closes of rounds <= r, up to the version named (what arrived of it); for a
            # part not named, every one that arrived.
            upto = named.get(e, max((v for v, _ in kept), default=0))
            for close in sorted(c for c in kept if c[0] <= upto and c[1] <= r):
                contributors, samples = kept.pop(close)
                if contributors > 0:
                    self.load = on_part_closed(self.load, e, contributors, samples)
                self.folded[e] = max(self.folded[e], close)
        self.closes = {n: noted for n, noted in self.closes.items() if n > r}
        self.load = on_round_closed(self.load, self.alpha)
        self.round, self.open = r, False
        closed = [ClosedRound(r, self.load)]
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
            "folded": {e: list(close) for e, close in self.folded.items()},
            "versions": {
                e: [[*close, *stats] for close, stats in vs.items()]
                for e, vs in self.versions.items()
            },
            "closes": {r: dict(noted) for r, noted in self.closes.items()},
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
        form = data.get("format")
        if form not in (CHECKPOINT_FORMAT, _FORMAT_BY_VERSION):
            raise ValueError(f"unknown load-monitor checkpoint format {form!r}")
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
        if form == _FORMAT_BY_VERSION:
            monitor._read_closes_by_version(data)
        else:
            monitor.folded = {int(e): (int(c[0]), int(c[1])) for e, c in data["folded"].items()}
            monitor.versions = {
                int(e): {(int(c[0]), int(c[1])): (int(c[2]), float(c[3])) for c in closes}
                for e, closes in data["versions"].items()
            }
            monitor.closes = {
                int(r): {int(e): int(v) for e, v in noted.items()}
                for r, noted in data["closes"].items()
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

    def _read_closes_by_version(self, data: Mapping[str, Any]) -> None:
        """Format 1's folded and kept versions (after `round` / `open` were read): a folded
        version was folded by the last round closed, a kept one belongs to the round open (or
        the next one): the rounds a redelivery of them carries."""
        folded_by = self.round - 1 if self.open else self.round
        kept_in = self.round if self.open else self.round + 1
        self.folded = {int(e): (int(v), folded_by) for e, v in data["folded"].items()}
        self.versions = {
            int(e): {(int(v), kept_in): (int(s[0]), float(s[1])) for v, s in vs.items()}
            for e, vs in data["versions"].items()
        }
