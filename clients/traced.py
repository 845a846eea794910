"""`TracedWorld`: the simulated fleet with a real fleet's behaviour (`--from-recording FILE`).

A `FleetWorld` whose availability, reported capabilities and round times come from a
`recording.trace.FleetTrace` (a recording's telemetry, or a FedScale trace) instead of the
scenario's generator: device i is online in round r when the trace says so, reports the step
time and link rate it measured in the round before, and takes the round time those give
(`moe.fleet.round_time_s`, the formula everything else uses) at the trace's conditions of r.
Data, model and training stay the scenario's. Rounds past the trace's end loop over it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

from clients.world import FleetWorld
from moe.fleet import round_time_s
from moe.scenario import Scenario
from moe.tensors import PartTensors
from moe.wire import LossReport, telemetry_message
from recording.fedscale import load_fedscale
from recording.reader import open_recording
from recording.trace import FleetTrace
from schemas.messages import Telemetry


class TracedWorld(FleetWorld):
    """The scenario's world, its devices' behaviour from `trace`."""

    def __init__(self, scenario: Scenario, trace: FleetTrace, *, time_scale: float) -> None:
        super().__init__(scenario, time_scale=time_scale)
        self.trace = trace

    def available(self, device: int, round_: int) -> bool:
        """Online when the trace's round for `round_` has the device."""
        return device in self.trace.online(round_)

    def round_wall_s(self, device: int, experts: Sequence[int], round_: int) -> float:
        """The round time at the trace's conditions of `round_` (× time scale)."""
        now = self.trace.conditions(device, round_)
        capability = self.scenario.fleet[device]
        if now is not None:
            capability = dataclasses.replace(
                capability,
                compute_ms_per_sample=now.compute_ms_per_sample,
                bandwidth_kbps=now.bandwidth_kbps,
            )
        seconds = round_time_s(
            capability,
            self.scenario.data.devices[device].num_samples,
            self.scenario.config.epochs,
            experts,
            self.scenario.part_bytes,
        )
        return seconds * self.time_scale

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
        """The scenario's report (routing histogram, samples) with the trace's measurements."""
        reading = self.scenario.telemetry(device, {p: dict(t) for p, t in parts.items()}, round_)
        seen = self.trace.reported(device, round_)
        if seen is not None:
            reading = dataclasses.replace(
                reading,
                compute_ms_per_sample=seen.compute_ms_per_sample,
                bandwidth_kbps=seen.bandwidth_kbps,
                memory_mb=seen.memory_mb,
            )
        return telemetry_message(
            reading, round=round_, timestamp=timestamp, gate_version=gate_version, losses=losses
        )


def load_trace(
    path: Path | str, num_devices: int, *, round_s: float = 600.0, rounds: int = 48
) -> FleetTrace:
    """A recording (`.parquet`) or a FedScale trace (`.json`) as a `FleetTrace`."""
    if str(path).endswith(".json"):
        return FleetTrace.from_fedscale(
            load_fedscale(path), num_devices, round_s=round_s, rounds=rounds
        )
    return FleetTrace.from_records(open_recording(path).records(), num_devices)
