"""FedScale's device traces, read from a file (pure; nothing is downloaded, nothing unpickled).

FedScale (Lai et al., ICML'22) describes a client by its device capacity and its behaviour:

    client_device_capacity[id] = {"computation": ms per sample, "communication": kbit/s}
    client_behave_trace[id]    = {"duration": s, "active": [t, ...], "inactive": [t, ...],
                                  "finish_time": s}

(active from `active[i]` until `inactive[i]`, in seconds of trace time, repeating every
`duration`). FedScale ships both as Python pickles; this project never unpickles files, so it
reads the same schema as JSON: one object with the two maps, as
`json.dump({"client_device_capacity": cap, "client_behave_trace": beh}, f)` writes them from the
pickles. `recording/examples/fedscale-small.json` is a small synthetic file in that schema.

A trace becomes either a recording (`to_records`: per round, each active client's status and
telemetry, each inactive one's offline status: what the fleet would have sent) or the fleet's
behaviour (`recording.trace.FleetTrace.from_fedscale`).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recording.errors import RecordingError
from recording.format import MQTT, Record
from schemas import encode
from schemas.messages import DeviceStatus, Telemetry


@dataclass(frozen=True, slots=True)
class FedScaleClient:
    """One client of a FedScale trace."""

    client_id: str
    computation_ms: float
    communication_kbps: float
    active: tuple[float, ...]
    inactive: tuple[float, ...]
    duration_s: float

    def online_at(self, t: float) -> bool:
        """Whether the client is active at trace time `t` (the trace repeats every duration)."""
        if not self.active:
            return False
        if self.duration_s > 0:
            t %= self.duration_s
        i = bisect.bisect_right(self.active, t) - 1
        if i < 0:
            return False
        end = self.inactive[i] if i < len(self.inactive) else float("inf")
        return t < end


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise RecordingError(f"FedScale trace: {what} must be a number, got {value!r}")
    return float(value)


def parse_fedscale(data: Mapping[str, Any]) -> list[FedScaleClient]:
    """The clients of a FedScale trace (capacity and behaviour maps), sorted by id.

    Raises:
        RecordingError: a missing map, a client without capacity, a bad value.
    """
    capacity = data.get("client_device_capacity")
    behaviour = data.get("client_behave_trace")
    if not isinstance(capacity, Mapping) or not isinstance(behaviour, Mapping):
        raise RecordingError(
            "FedScale trace: expected the maps client_device_capacity and client_behave_trace"
        )
    clients = []
    for cid in sorted(behaviour, key=lambda c: (len(str(c)), str(c))):
        trace = behaviour[cid]
        cap = capacity.get(cid)
        if not isinstance(cap, Mapping) or not isinstance(trace, Mapping):
            raise RecordingError(f"FedScale trace: client {cid!r} has no capacity or behaviour")
        active = tuple(_number(t, f"{cid}.active") for t in trace.get("active", ()))
        inactive = tuple(_number(t, f"{cid}.inactive") for t in trace.get("inactive", ()))
        if list(active) != sorted(active) or len(inactive) < len(active) - 1:
            raise RecordingError(f"FedScale trace: client {cid!r}: unsorted or unpaired times")
        comp = _number(cap.get("computation"), f"{cid}.computation")
        comm = _number(cap.get("communication"), f"{cid}.communication")
        if not (comp > 0 and comm > 0):
            raise RecordingError(f"FedScale trace: client {cid!r}: capacity must be > 0")
        clients.append(
            FedScaleClient(
                str(cid),
                comp,
                comm,
                active,
                inactive,
                _number(trace.get("duration", 0.0), f"{cid}.duration"),
            )
        )
    if not clients:
        raise RecordingError("FedScale trace: no client")
    return clients


def load_fedscale(path: Path | str) -> list[FedScaleClient]:
    """`parse_fedscale` of a JSON file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise RecordingError(f"{path}: cannot read a FedScale trace (JSON): {exc}") from exc
    if not isinstance(data, dict):
        raise RecordingError(f"{path}: a FedScale trace is a JSON object")
    return parse_fedscale(data)


def device_name(index: int) -> str:
    """The device id the trace's index-th client gets (the scenario's `dev-00000` form)."""
    return f"dev-{index:05d}"


def to_records(
    clients: Sequence[FedScaleClient],
    *,
    rounds: int,
    round_s: float,
    root: str = "fleet",
    memory_mb: float = 2048.0,
    num_samples: int = 40,
    start_ns: int = 0,
) -> list[Record]:
    """What the trace's fleet would have announced for rounds 1..`rounds`, round r at trace
    time (r − 1)·`round_s`: an online client its telemetry (FedScale's computation and
    communication as the measured step time and link), after an online status when it was not
    online the round before (as a device announces a change of presence); an inactive one an
    offline status every round."""
    if rounds < 1 or not round_s > 0:
        raise RecordingError("trace import needs rounds >= 1 and round_s > 0")
    out: list[Record] = []
    was_online = [False] * len(clients)
    for r in range(1, rounds + 1):
        t = (r - 1) * round_s
        base = start_ns + int(t * 1e9)
        for i, client in enumerate(clients):
            dev = device_name(i)
            at = base + i * 1000
            online = client.online_at(t)
            if not (online and was_online[i]):
                status = DeviceStatus(
                    message_id=f"fs-s-{dev}-{r}",
                    device_id=dev,
                    round=r,
                    timestamp=at / 1e9,
                    online=online,
                    reason="" if online else "unavailable",
                )
                out.append(_mqtt(at, f"{root}/{dev}/status", encode(status), retain=True))
            was_online[i] = online
            if online:
                telemetry = Telemetry(
                    message_id=f"fs-t-{dev}-{r}",
                    device_id=dev,
                    round=r,
                    timestamp=at / 1e9,
                    device_type=0,
                    compute_ms_per_sample=client.computation_ms,
                    bandwidth_kbps=client.communication_kbps,
                    memory_mb=memory_mb,
                    battery=1.0,
                    num_samples=num_samples,
                    routing_histogram=(),
                )
                out.append(_mqtt(at + 1, f"{root}/{dev}/telemetry", encode(telemetry)))
    return out


def _mqtt(t_ns: int, topic: str, payload: bytes, *, retain: bool = False) -> Record:
    return Record.observed(t_ns, MQTT, topic, payload, qos=1, retain=retain)
