"""`FleetTrace`: a real fleet's behaviour for the fleet simulator, from a recording or FedScale.

The simulator's devices normally take capabilities, availability and timing from the scenario's
generator (`moe.fleet`, `moe.dynamics`). With a trace (`fedmoe fleet --from-recording FILE`) they
take them from what a real fleet did instead (pure; the world that uses it is
`clients.traced.TracedWorld`):

- availability: device i is online in live round r when it announced itself (telemetry) in the
  trace's round for r (the trace's rounds in order, from the first, looping when the run is
  longer than the trace);
- capabilities: its memory from its reports; its real step time and link rate in round r are
  what it measured there (its telemetry of the next round reports them; else its own report);
- devices map by id (`dev-00012` is scenario device 12); a device the trace never saw is never
  online.

From FedScale (`recording.fedscale`): client k is device k, online in round r when active at
trace time (r − 1)·round_s, with its constant computation and communication.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from recording.errors import RecordingError
from recording.fedscale import FedScaleClient
from recording.format import Record
from schemas import decode
from schemas.errors import SchemaError
from schemas.messages import Telemetry


@dataclass(frozen=True, slots=True)
class Conditions:
    """One device in one round: its real step time (ms/sample) and link rate (kbit/s)."""

    compute_ms_per_sample: float
    bandwidth_kbps: float
    memory_mb: float


@dataclass(frozen=True)
class FleetTrace:
    """Per trace round: the online devices and their conditions (see the module docstring)."""

    rounds: tuple[Mapping[int, Conditions], ...]  # trace round -> device index -> conditions

    def __post_init__(self) -> None:
        if not self.rounds:
            raise RecordingError("the trace has no round in which a device announced itself")

    def _round(self, live_round: int) -> Mapping[int, Conditions]:
        return self.rounds[(max(live_round, 1) - 1) % len(self.rounds)]

    def online(self, live_round: int) -> frozenset[int]:
        """Devices online in live round `live_round`."""
        return frozenset(self._round(live_round))

    def conditions(self, device: int, live_round: int) -> Conditions | None:
        """What `device` is in `live_round` (None: not in the trace then)."""
        return self._round(live_round).get(device)

    def reported(self, device: int, live_round: int) -> Conditions | None:
        """What `device` reports before `live_round`: what it measured the round before."""
        return self.conditions(device, live_round - 1) or self.conditions(device, live_round)

    @classmethod
    def from_records(cls, records: Iterable[Record], num_devices: int) -> FleetTrace:
        """From a recording's telemetry (devices outside 0..num_devices−1 are left out)."""
        from moe.scenario import device_index

        seen: dict[int, dict[int, Telemetry]] = {}
        for r in records:
            if r.type != "telemetry":
                continue
            try:
                m = decode(r.payload)
            except SchemaError:
                continue
            index = device_index(m.device_id)
            if isinstance(m, Telemetry) and index is not None and index < num_devices:
                seen.setdefault(m.round, {})[index] = m
        ordered = sorted(seen)
        rounds = []
        for pos, k in enumerate(ordered):
            later = seen[ordered[pos + 1]] if pos + 1 < len(ordered) else {}
            now = {}
            for index, m in seen[k].items():
                # Its next report says what it measured in k; the last round has only its own.
                measured = later.get(index, m)
                now[index] = Conditions(
                    measured.compute_ms_per_sample, measured.bandwidth_kbps, m.memory_mb
                )
            rounds.append(now)
        return cls(tuple(rounds))

    @classmethod
    def from_fedscale(
        cls,
        clients: Sequence[FedScaleClient],
        num_devices: int,
        *,
        round_s: float,
        rounds: int,
        memory_mb: float = 2048.0,
    ) -> FleetTrace:
        """From a FedScale trace: client k is device k (see the module docstring)."""
        if not round_s > 0 or rounds < 1:
            raise RecordingError("a FedScale fleet needs round_s > 0 and rounds >= 1")
        out = []
        for r in range(1, rounds + 1):
            t = (r - 1) * round_s
            out.append(
                {
                    i: Conditions(c.computation_ms, c.communication_kbps, memory_mb)
                    for i, c in enumerate(clients[:num_devices])
                    if c.online_at(t)
                }
            )
        if not any(out):
            raise RecordingError("no FedScale client is active in any round")
        return cls(tuple(out))
