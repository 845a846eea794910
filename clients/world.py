"""What the scenario decides for a simulated device, pure and deterministic.

- availability: device i takes part in round r iff i is in `scenario.online(r)`, exactly as in
  the in-process simulation (computed once per round for the whole fleet process);
- simulated round time: `scenario.round_time_s(i, experts, r)` simulated seconds, times the run's
  `time_scale` in wall seconds, counted from the round's open time (the assignment's
  timestamp): that round time already includes moving the parts, so the bus's own delivery
  delay (measured ~0.25-0.4 s from open to arrival in a local demo, a fifth of the default
  1.5 s deadline) would otherwise make devices late that the in-process simulation has in time;
- connection drops (the fault injection): per (device, round) one draw from a seed derived
  from the scenario seed, so a run's faults repeat with its seed; a drop happens at a uniform
  moment within the round's wall deadline;
- local training: `train_local` seeded with `scenario.train_seed(round, device)`;
- what a device reports: `Telemetry` (capabilities from the fleet, the routing histogram of its
  data under the model it holds, the losses of its last training) and `DeviceStatus`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

from moe.scenario import Scenario, derived_seed, device_id
from moe.tensors import PartTensors
from moe.training import LocalResult, train_local
from moe.wire import LossReport, telemetry_message
from schemas.messages import Assignment, DeviceStatus, Telemetry

# Purpose word of the drop draws' derived seeds (moe.scenario uses 1..3 for its own).
_DROPS = 101


class FleetWorld:
    """The scenario as the devices of one fleet process see it."""

    def __init__(self, scenario: Scenario, *, time_scale: float) -> None:
        if not time_scale > 0:
            raise ValueError("time_scale must be > 0")
        self.scenario = scenario
        self.time_scale = time_scale
        # device -> round-time factor while a soak slows it down (`clients.control`)
        self.slowdown: dict[int, float] = {}
        # Every device of the process asks about the same few rounds: one draw per round.
        self._online = lru_cache(maxsize=8)(self._online_set)

    def _online_set(self, round_: int) -> frozenset[int]:
        return frozenset(int(i) for i in self.scenario.online(round_))

    def available(self, device: int, round_: int) -> bool:
        """Whether `device` is online in `round_`."""
        return device in self._online(round_)

    def round_wall_s(self, device: int, experts: Sequence[int], round_: int) -> float:
        """Wall seconds `device` takes for `round_` training `experts` (simulated × scale,
        × its slowdown while it has one)."""
        factor = self.slowdown.get(device, 1.0)
        return self.scenario.round_time_s(device, experts, round_) * self.time_scale * factor

    def delivery_lag_s(self, opened_at: float, now: float) -> float:
        """Wall seconds since a round opened at `opened_at` (an assignment's timestamp), as
        seen at `now`: the bus's delivery delay, bounded to [0, deadline_wall_s] so a skewed
        clock or a stale message cannot move a device's start further than one deadline."""
        return min(max(now - opened_at, 0.0), self.deadline_wall_s)

    @property
    def deadline_wall_s(self) -> float:
        """Wall seconds from assignment to a round's deadline."""
        return self.scenario.config.deadline_s * self.time_scale

    def drop_delay(self, device: int, round_: int, prob: float) -> float | None:
        """Wall seconds after RoundClosed(round_ - 1) at which `device` drops its connection
        in `round_`, or None when it does not."""
        if prob <= 0:
            return None
        rng = np.random.default_rng(derived_seed(self.scenario.config.seed, _DROPS, round_, device))
        if rng.random() >= prob:
            return None
        return float(rng.uniform(0.0, self.deadline_wall_s))

    def train(
        self, device: int, assignment: Assignment, parts: Mapping[str, PartTensors]
    ) -> LocalResult:
        """`device`'s local training for `assignment` from `parts`: `train_local` with the
        scenario's seed of (round, device) and its epochs / batch size / lr, as in the
        in-process simulation."""
        config = self.scenario.config
        data = self.scenario.data.devices[device]
        return train_local(
            self.scenario.model,
            parts,
            data.x,
            data.y,
            list(assignment.experts),
            seed=self.scenario.train_seed(assignment.round, device),
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
        )

    def telemetry(
        self,
        device: int,
        parts: Mapping[str, PartTensors],
        *,
        round_: int,
        gate_version: int,
        losses: LossReport,
        timestamp: float,
    ) -> Telemetry:
        """`device`'s report for `round_` under the model `parts` (every part's gate row)."""
        reading = self.scenario.telemetry(device, {p: dict(t) for p, t in parts.items()}, round_)
        return telemetry_message(
            reading, round=round_, timestamp=timestamp, gate_version=gate_version, losses=losses
        )


def status(
    device: int, *, round_: int, online: bool, reason: str, message_id: str, timestamp: float
) -> DeviceStatus:
    """A `DeviceStatus` of `device` (also the form of its last will)."""
    return DeviceStatus(
        message_id=message_id,
        device_id=device_id(device),
        round=round_,
        timestamp=timestamp,
        online=online,
        reason=reason,
    )
