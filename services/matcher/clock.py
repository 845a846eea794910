"""The round clock: a pure state machine over the matcher's inputs and the wall clock.

    idle ──► genesis round 0 open ──► closed 0 ──► open 1 ──► closed 1 ──► open 2 ...

- `apply(message, at=...)` folds one input: `RoundOpened` / `PartClosed` / `RoundClosed` from
  `rounds` (the matcher's own included: it reads its output back), `ProfileSnapshot` from
  `profiles`, `ExpertLoad` from `expert-load`. Replayed history and live records go through the
  same `apply`, so a restarted matcher is in the state its inputs say, never a fresh one.
- `advance(now)` returns what is due: the `RoundClosed` of the open round (every part's latest
  version and every expert's gate row at it, as the `PartClosed`s carried them) when a
  `PartClosed` of it arrived for every part, or when `now > deadline + 2 × grace` (plus
  `max_wait_s` while some part has never closed: the genesis round of a large model); else the next
  round's `RoundOpened` (to `rounds`) and its markers (the same message to `updates`, one per
  part id, keyed by the part, each with the part's assigned devices and their weight caps)
  when the open rule holds (see `_open_reason`); with no history at all the genesis round 0
  (no devices, deadline = now).
- Assignments of round r are held back until `apply` sees the matcher's own `RoundOpened(r)`
  on `rounds`: the record is then in the log, and the runtime confirmed every output of the
  tick or batch that produced it (markers included) before it polled again. So every
  aggregator has its marker before any device can send an update of round r.

Invariants: at most one round is open; a round number is never opened twice (the next round is
one past the highest seen opened or closed); each round gets one `RoundClosed`; no round past
`max_rounds` opens.

A crash between the `RoundOpened` and the assignments (the assignments are in memory only):
after the replay, `resume(assigned, now)` is told which devices of the open round have an
`Assignment` in the log. If some are missing and the deadline is still ahead, the round is
planned again from the replayed profiles and load (unchanged since: no assignment reached the
profiler or the load monitor); when the plan matches the logged `RoundOpened` (same devices per
part), the `RoundOpened` and its markers are announced again (harmless: an aggregator opens a
round once) and the missing assignments follow when it is read back, with the logged deadline
and versions. Otherwise the round closes at its deadline with what it got.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from moe.load import ExpertLoadState
from moe.parts import SHARED, expert_part_id
from moe.wire import expert_load_state
from schemas.messages import (
    Assignment,
    ExpertLoad,
    Message,
    PartClosed,
    ProfileSnapshot,
    RoundClosed,
    RoundOpened,
)
from schemas.topics import Topic
from services.errors import InvalidPayload
from services.handler import Outbound
from services.matcher.planning import RoundPlan, candidate_profiles

MATCHER_ID = "matcher"
ROUND_KEY = "round"
GENESIS_ROUND = 0

Planner = Callable[[int, Sequence[ProfileSnapshot], ExpertLoadState], RoundPlan]
"""(round, every known profile, load) → the round's plan (`planning.plan_round`, bound)."""


@dataclass(frozen=True, slots=True)
class ClockConfig:
    """The clock's fixed parameters.

    Attributes:
        parts: every part id of the model (the genesis round and the close rule name them all).
        strategy: the strategy's name (carried in `RoundOpened`).
        deadline_wall_s: wall seconds from a round's opening to its deadline.
        grace_s: the aggregators' grace; the round closes anyway at deadline + 2 × grace.
        open_delay_s: how long reports must have been quiet before the next round opens.
        max_wait_s: the next round opens at the latest this long after the last one closed.
        max_rounds: training rounds to open (1..max_rounds); 0 = unlimited.
        fleet_size: devices in the scenario: once all reported, the next round opens at once.
        wait_for_load: hold the next round until the ExpertLoad of the closed round arrived.
        settle_quorum: the "settled" rule opens only once this share of the devices that
            reported for any of the last `RECENT_ROUNDS` rounds reported for the next one.
        open_on_recent: from round 2, open as soon as all of those reported ("all recent
            reported", no quiet period); off by default: see `_open_reason`.
    """

    parts: tuple[str, ...]
    strategy: str
    deadline_wall_s: float
    grace_s: float
    open_delay_s: float
    max_wait_s: float
    max_rounds: int = 0
    fleet_size: int = 0
    wait_for_load: bool = True
    settle_quorum: float = 0.5
    open_on_recent: bool = False


RECENT_ROUNDS = 3
"""Rounds (the next one and the two before) whose reporters the settle quorum counts."""


class Announcements:
    """Per round, how many devices' latest snapshot is of that round (online ones apart) and
    when the latest came: kept up to date per snapshot, so the open rule is O(1) per record."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[int, bool]] = {}  # device → (round, online)
        self._reported: Counter[int] = Counter()
        self._online: Counter[int] = Counter()
        self._last_at: dict[int, float] = {}

    def update(self, snapshot: ProfileSnapshot, at: float) -> None:
        """A device's new latest snapshot, arrived at `at`."""
        old = self._latest.get(snapshot.device_id)
        if old is not None:
            self._reported[old[0]] -= 1
            self._online[old[0]] -= int(old[1])
        r = snapshot.round
        self._latest[snapshot.device_id] = (r, snapshot.online)
        self._reported[r] += 1
        self._online[r] += int(snapshot.online)
        self._last_at[r] = max(at, self._last_at.get(r, at))

    def reported(self, r: int) -> int:
        """Devices whose latest snapshot is of round `r`."""
        return self._reported[r]

    def online(self, r: int) -> int:
        """Of those, the ones online."""
        return self._online[r]

    def recent(self, r: int) -> int:
        """Devices whose latest snapshot is of round `r` or of one of the rounds just before
        (`RECENT_ROUNDS` in all): the fleet that is expected to report for `r`."""
        return sum(self._reported[r - k] for k in range(RECENT_ROUNDS))

    def last_at(self, r: int) -> float:
        """When the latest snapshot of round `r` arrived (-inf when none did)."""
        return self._last_at.get(r, -math.inf)


class RoundClock:
    """The matcher's whole state and its transitions (see the module docstring)."""

    def __init__(self, config: ClockConfig, planner: Planner) -> None:
        self.config = config
        self._planner = planner
        self._num_experts = len(config.parts) - 1
        self._opened: RoundOpened | None = None
        self._closed: RoundClosed | None = None
        self._closed_parts: dict[str, int] = {}  # of the open round
        self._applied: dict[str, int] = {}  # updates applied per closed part of the open round
        self._versions: dict[str, int] = {}  # latest known version of every part
        self._gates: dict[str, tuple[int, Mapping[str, np.ndarray]]] = {}  # (version, row)
        self._profiles: dict[str, ProfileSnapshot] = {}  # the latest per device
        self._announced = Announcements()
        self._load: ExpertLoad | None = None
        self._load_after_close = False
        self._held: tuple[int, list[Assignment]] | None = None  # round, its assignments
        # To produce again after a restart: the RoundOpened and each part's assigned devices.
        self._reannounce: tuple[RoundOpened, dict[str, dict[str, int]]] | None = None
        self.last_opening = ""  # why and over how many candidates the latest round opened
        self._resumed_at = -math.inf  # max_wait counts from here too (see `resume`)
        # Rounds in a row that assigned devices and closed with no update applied: the sign of
        # a deadline shorter than the bus's own round trip (advisory; a restart starts at 0).
        self.starved_rounds = 0

    # -- what it knows -----------------------------------------------------------------------

    @property
    def planner(self) -> Planner:
        """The planner every round is matched with (one for the clock's lifetime)."""
        return self._planner

    @property
    def opened(self) -> RoundOpened | None:
        """The latest round opened (open or closed since)."""
        return self._opened

    @property
    def closed(self) -> RoundClosed | None:
        """The latest round closed."""
        return self._closed

    @property
    def open_round(self) -> int | None:
        """The round open now, or None."""
        if self._opened is None:
            return None
        if self._closed is not None and self._closed.round >= self._opened.round:
            return None
        return self._opened.round

    @property
    def next_round(self) -> int:
        """The number the next round opened will get."""
        seen = [m.round for m in (self._opened, self._closed) if m is not None]
        return max(seen) + 1 if seen else GENESIS_ROUND

    @property
    def versions(self) -> dict[str, int]:
        """The latest known version of every part (0 for a part never closed)."""
        return {p: self._versions.get(p, 0) for p in self.config.parts}

    @property
    def gates(self) -> dict[str, Mapping[str, np.ndarray]]:
        """The gate row of every expert part whose latest version's row is known."""
        return {p: row for p, (v, row) in self._gates.items() if v == self._versions.get(p, 0)}

    @property
    def held_assignments(self) -> int:
        """Assignments computed and waiting for their RoundOpened to be read back."""
        return len(self._held[1]) if self._held is not None else 0

    def profiles(self) -> list[ProfileSnapshot]:
        """The latest snapshot of every device."""
        return list(self._profiles.values())

    def load_state(self) -> ExpertLoadState:
        """The latest expert load (empty before the load monitor published any)."""
        if self._load is None:
            return ExpertLoadState.empty(self._num_experts)
        return expert_load_state(self._load)

    # -- inputs ------------------------------------------------------------------------------

    def apply(self, message: Message, *, at: float) -> list[Outbound]:
        """Fold one input (`at`: when it arrived); returns held assignments it releases.

        Raises:
            InvalidPayload: a message the clock cannot take (wrong type, unknown part, a load
                of another expert count).
        """
        if isinstance(message, PartClosed):
            self._on_part_closed(message)
        elif isinstance(message, RoundOpened):
            return self._on_round_opened(message)
        elif isinstance(message, RoundClosed):
            self._on_round_closed(message)
        elif isinstance(message, ProfileSnapshot):
            self._profiles[message.device_id] = message
            self._announced.update(message, at)
        elif isinstance(message, ExpertLoad):
            self._on_load(message)
        else:
            raise InvalidPayload("unexpected-message", f"{type(message).__name__} for the matcher")
        return []

    def _check_parts(self, versions: Mapping[str, int], what: str) -> None:
        unknown = sorted(set(versions) - set(self.config.parts))
        if unknown:
            raise InvalidPayload("unknown-part", f"{what} names {unknown[:4]}")

    def _merge_versions(
        self, versions: Mapping[str, int], gates: Mapping[str, Mapping[str, np.ndarray]]
    ) -> None:
        for part, version in versions.items():
            self._versions[part] = max(version, self._versions.get(part, 0))
        for part, row in gates.items():
            held = self._gates.get(part)
            if row and (held is None or versions[part] >= held[0]):
                self._gates[part] = (versions[part], row)

    def _on_round_opened(self, message: RoundOpened) -> list[Outbound]:
        self._check_parts(message.expected_parts, "RoundOpened.expected_parts")
        self._check_parts(message.model_versions, "RoundOpened.model_versions")
        held = self._held
        if held is not None and message.round == held[0]:
            # Our own RoundOpened is in the log (and its markers acknowledged): assign.
            self._held = None
            return [Outbound(Topic.ASSIGNMENTS, a.device_id, a) for a in held[1]]
        if self._opened is None or message.round > self._opened.round:
            # History (a replay after a restart) or another matcher: the log is the truth.
            self._opened = message
            self._closed_parts = {}
            self._applied = {}
            self._held = None
        return []

    def _on_part_closed(self, message: PartClosed) -> None:
        self._check_parts({message.part: message.version}, "PartClosed")
        self._merge_versions({message.part: message.version}, {message.part: message.gate})
        if message.round == self.open_round:
            self._closed_parts[message.part] = message.version
            self._applied[message.part] = message.applied

    def _on_round_closed(self, message: RoundClosed) -> None:
        self._check_parts(message.model_versions, "RoundClosed.model_versions")
        self._merge_versions(message.model_versions, message.gates)
        if self._closed is None or message.round > self._closed.round:
            self._closed = message
            self._closed_parts = {}
            self._applied = {}
            self._load_after_close = self._load is not None and self._load.round >= message.round

    def _on_load(self, message: ExpertLoad) -> None:
        if len(message.assigned_clients) != self._num_experts:
            detail = f"{len(message.assigned_clients)} experts, the model has {self._num_experts}"
            raise InvalidPayload("wrong-expert-count", detail)
        self._load = message
        if self._closed is not None and message.round >= self._closed.round:
            self._load_after_close = True

    def resume(self, assigned: Collection[str], now: float) -> str:
        """After a restore: plan the open round's missing assignments again (see above).

        Args:
            assigned: devices with an `Assignment` of the open round in the log.
            now: the wall clock.

        Returns:
            What was decided, for the log.
        """
        # A restarted matcher has not read the reports that came while it was down: max_wait
        # counts from now, not from the close it replayed (else it opens at once, on nobody).
        self._resumed_at = now
        opened, r = self._opened, self.open_round
        if opened is None or r is None or r == GENESIS_ROUND:
            return "no round to resume"
        if len(set(assigned)) >= opened.devices:
            return f"round {r}: all {opened.devices} assignments in the log"
        if now >= opened.deadline:
            return f"round {r}: assignments missing, deadline passed: it closes by its deadline"
        plan = self._planner(r, self.profiles(), self.load_state())
        if (
            plan.devices != opened.devices
            or plan.expected_parts(self._num_experts) != dict(opened.expected_parts)
            or not set(assigned) <= set(plan.experts)
        ):
            return f"round {r}: assignments missing, the profiles changed: closes by its deadline"
        missing = [
            Assignment(
                message_id=f"assignment-{r}-{device}",
                device_id=device,
                round=r,
                timestamp=opened.timestamp,
                experts=experts,
                deadline=opened.deadline,
                model_versions=opened.model_versions,
            )
            for device, experts in sorted(plan.experts.items())
            if device not in assigned
        ]
        self._held = (r, missing)
        self._reannounce = (opened, self._assigned_by_part(plan.experts))
        return f"round {r}: {len(missing)} assignments missing: announcing the round again"

    # -- time --------------------------------------------------------------------------------

    def advance(self, now: float) -> list[Outbound]:
        """What is due at `now`: close the open round, or open the next one, or nothing."""
        opened, open_round = self._opened, self.open_round
        if self._reannounce is not None:
            (again, assigned), self._reannounce = self._reannounce, None
            if again.round == open_round:
                return self._announce(again, assigned)
        if opened is not None and open_round is not None:
            if all(p in self._closed_parts for p in self.config.parts):
                return self._close(opened, "parts-closed", now)
            late = opened.deadline + 2.0 * self.config.grace_s
            if any(p not in self._versions for p in self.config.parts):
                # A part no aggregator has closed yet (one still creating its parts: the genesis
                # round of a large model) has no gate row for the round marker, and devices
                # cannot announce the next round without every row: it gets `max_wait_s` more.
                late += self.config.max_wait_s
            if now > late:
                return self._close(opened, "deadline", now)
            return []
        if self._opened is None and self._closed is None:
            return self._open(GENESIS_ROUND, now, "genesis")
        r = self.next_round
        if self.config.max_rounds and r > self.config.max_rounds:
            return []
        reason = self._open_reason(r, now)
        if reason is None:
            return []
        return self._open(r, now, reason)

    def _open_reason(self, r: int, now: float) -> str | None:
        """Why round `r` may open now, or None to wait.

        At the latest `max_wait_s` after the last close (or after a restart). Before that it
        waits for the load monitor's ExpertLoad of the closed round (when configured), then
        opens as soon as every device of the scenario reported for `r` (online or not), or, with
        `open_on_recent` and from round 2 on, as soon as every recent reporter did (every device
        whose latest report is of one of the last `RECENT_ROUNDS` rounds, at least one
        online), or once at least one
        candidate is online, `settle_quorum` of the recent reporters reported for `r`, and no
        report came for `open_delay_s` (the telemetry has settled). Why the quorum: under load,
        reports can pause for longer than `open_delay_s` while most are still in flight; a
        round opened then takes the few early ones, the rest arrive for a round already open,
        and rounds stay tiny from then on (seen in a 2,000-device soak). Why "every recent
        reporter": a device that has never been online has no profile, so the scenario's count
        is never reached in a fleet with such devices, and every round then waits out the
        quiet period and the tick after it (1.2 s of a 1.5 s open gap at 100 devices,
        `benchmarks.round`); round 1 is left out because before it nobody has reported yet,
        and the first report would otherwise be "everyone". Why it is off by default: it does
        not wait for a device that reports for the first time in `RECENT_ROUNDS` rounds, and
        whether such a report lands before or after the opening is then a matter of
        milliseconds, so a replay of recorded traffic no longer assigns as recorded (2 of 3
        rounds differed in `tests/e2e/test_replay.py`); the quiet period absorbs that.
        """
        closed_at = self._closed.timestamp if self._closed is not None else now
        if now >= max(closed_at, self._resumed_at) + self.config.max_wait_s:
            return "max-wait"
        if self.config.wait_for_load and not self._load_after_close:
            return None
        announced = self._announced
        if self.config.fleet_size and announced.reported(r) >= self.config.fleet_size:
            return "all-reported"
        if not announced.online(r):
            return None
        recent = announced.recent(r)
        if self.config.open_on_recent and r > GENESIS_ROUND + 1 and announced.reported(r) >= recent:
            return "all-recent-reported"
        if announced.reported(r) < self.config.settle_quorum * recent:
            return None
        quiet_since = max(closed_at, announced.last_at(r))
        return "settled" if now >= quiet_since + self.config.open_delay_s else None

    def _open(self, r: int, now: float, reason: str) -> list[Outbound]:
        config = self.config
        versions = self.versions
        if r == GENESIS_ROUND:
            self.last_opening = reason
            deadline = now
            expected = dict.fromkeys(config.parts, 0)
            assignments: list[Assignment] = []
            assigned: dict[str, dict[str, int]] = {}
        else:
            plan = self._planner(r, self.profiles(), self.load_state())
            reported = self._announced.reported(r)
            self.last_opening = (
                f"{reason}: {len(plan.candidates)} candidates, {reported} devices reported"
            )
            deadline = now + config.deadline_wall_s
            expected = plan.expected_parts(self._num_experts)
            assigned = self._assigned_by_part(plan.experts)
            assignments = [
                Assignment(
                    message_id=f"assignment-{r}-{device}",
                    device_id=device,
                    round=r,
                    timestamp=now,
                    experts=experts,
                    deadline=deadline,
                    model_versions=versions,
                )
                for device, experts in sorted(plan.experts.items())
            ]
        opened = RoundOpened(
            message_id=f"round-opened-{r}",
            device_id=MATCHER_ID,
            round=r,
            timestamp=now,
            deadline=deadline,
            strategy=config.strategy,
            devices=len(assignments),
            expected_parts=expected,
            model_versions=versions,
        )
        self._opened = opened
        self._closed_parts = {}
        self._applied = {}
        self._held = (r, assignments) if assignments else None
        return self._announce(opened, assigned)

    def _assigned_by_part(
        self, experts: Mapping[str, tuple[int, ...]]
    ) -> dict[str, dict[str, int]]:
        """Per part, its assigned devices and each one's weight cap: the samples its profile
        holds (what the aggregator lets an update of it weigh at most)."""
        out: dict[str, dict[str, int]] = {part: {} for part in self.config.parts}
        for device, chosen in experts.items():
            profile = self._profiles.get(device)
            cap = profile.num_samples if profile is not None else 0
            for part in (SHARED, *(expert_part_id(e) for e in chosen)):
                out.setdefault(part, {})[device] = cap
        return out

    def _announce(
        self, opened: RoundOpened, assigned: Mapping[str, Mapping[str, int]]
    ) -> list[Outbound]:
        # Each part's marker names only that part's devices: the aggregator that owns the part
        # learns its assignments in order, on the part's own partition, before any update.
        markers = [
            Outbound(Topic.UPDATES, part, replace(opened, assigned=dict(assigned.get(part, {}))))
            for part in self.config.parts
        ]
        return [Outbound(Topic.ROUNDS, ROUND_KEY, opened), *markers]

    def _close(self, opened: RoundOpened, reason: str, now: float) -> list[Outbound]:
        if opened.devices:
            starved = not any(self._applied.values())
            self.starved_rounds = self.starved_rounds + 1 if starved else 0
        self._applied = {}
        closed = RoundClosed(
            message_id=f"round-closed-{opened.round}",
            device_id=MATCHER_ID,
            round=opened.round,
            timestamp=now,
            reason=reason,
            parts_closed=len(self._closed_parts),
            model_versions=self.versions,
            gates=self.gates,
            last=bool(self.config.max_rounds) and opened.round >= self.config.max_rounds,
        )
        self._closed = closed
        self._closed_parts = {}
        self._held = None  # never read back: the round ends without them
        self._load_after_close = False
        return [Outbound(Topic.ROUNDS, ROUND_KEY, closed)]

    def candidates(self, r: int) -> list[ProfileSnapshot]:
        """The candidates round `r` would be matched over now."""
        return candidate_profiles(self.profiles(), r)
