"""The MQTT control traffic of one simulated round, in encoded bytes.

The engine counts the model bytes itself (parts down to assigned devices, updates up); this
module counts everything else that crosses MQTT in a round of the bus protocol, encoding the
same messages the devices, the matcher and the gateway send, so a strategy that moves fewer
parts but makes every device talk more is not flattered:

- up, per online device: its Telemetry (histogram, the losses of its last training), after a
  DeviceStatus(online) when it was not online the round before (a device announces a change
  of presence, not every round: the telemetry says it is online);
- down, per online device: the RoundClosed marker that opens its round, with every expert's
  gate row (devices route their data with all of them for their routing histogram);
- down, per assigned device: its Assignment, and one UpdateAck per part of its update (late
  ones too: the gateway acknowledges what reached it, the aggregator judges it late).

Unix timestamps and ids are fixed-width stand-ins, so the counts do not depend on the clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from moe.profiles import TelemetryReading
from moe.wire import LossReport, telemetry_message
from schemas import Assignment, DeviceStatus, RoundClosed, UpdateAck, encode

# A unix time with a fractional part (what the services stamp), so float encodings match.
_STAMP = 1_790_000_000.123


@dataclass(frozen=True, slots=True)
class RoundTraffic:
    """What crossed MQTT in one round besides whole parts and updates.

    Attributes:
        online: (reading, losses reported) of each device that announced itself.
        came_online: ids of those that were not online the round before (they send a status).
        assigned: (device id, experts, part ids of its update) of each assigned device.
        model_versions: every part's version at the round's open.
        gates: every expert part's gate row at that version (the marker carries them).
    """

    round: int
    online: Sequence[tuple[TelemetryReading, LossReport]]
    assigned: Sequence[tuple[str, Sequence[int], Sequence[str]]]
    model_versions: Mapping[str, int]
    gates: Mapping[str, Mapping[str, np.ndarray]]
    came_online: frozenset[str] = frozenset()


def control_bytes(traffic: RoundTraffic) -> int:
    """Encoded bytes of the round's control messages (module docstring)."""
    r = traffic.round
    marker = len(
        encode(
            RoundClosed(
                message_id=f"round-closed-{r - 1}",
                device_id="matcher",
                round=r - 1,
                timestamp=_STAMP,
                reason="complete",
                parts_closed=len(traffic.model_versions),
                model_versions=dict(traffic.model_versions),
                gates=traffic.gates,
            )
        )
    )
    total = 0
    for reading, losses in traffic.online:
        telemetry = telemetry_message(
            reading, round=r, timestamp=_STAMP, gate_version=r - 1, losses=losses
        )
        total += marker + len(encode(telemetry))
        if reading.device_id in traffic.came_online:
            status = DeviceStatus(
                message_id=f"st-{reading.device_id}-{r}",
                device_id=reading.device_id,
                round=r,
                timestamp=_STAMP,
                online=True,
                reason="available",
            )
            total += len(encode(status))
    for device, experts, parts in traffic.assigned:
        total += len(
            encode(
                Assignment(
                    message_id=f"assignment-{r}-{device}",
                    device_id=device,
                    round=r,
                    timestamp=_STAMP,
                    experts=tuple(experts),
                    deadline=_STAMP,
                    model_versions=dict(traffic.model_versions),
                )
            )
        )
        for part in parts:
            total += len(
                encode(
                    UpdateAck(
                        message_id=f"ack-{device}-{r}-{part}",
                        device_id=device,
                        round=r,
                        timestamp=_STAMP,
                        update_id=f"up-{device}-r{r}",
                        part=part,
                        status="applied",
                    )
                )
            )
    return total
