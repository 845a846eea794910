"""Conversions between the domain types of `moe` and the wire messages of `schemas`.

One place for them, so the profiler, the load monitor, the matcher, the devices and the
in-process simulation agree on what a field means. Domain types key experts by index; the
wire keys them by part id (`expert-3`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from moe.load import ExpertLoadState, imbalance
from moe.parts import SHARED, expert_index, expert_part_id
from moe.profiles import ClientProfile, TelemetryReading
from moe.training import LocalResult
from schemas.messages import ExpertLoad, ModelUpdate, PartPayload, ProfileSnapshot, Telemetry


def _by_part(values: Mapping[int, float]) -> dict[str, float]:
    return {expert_part_id(e): float(v) for e, v in values.items()}


def _by_index(values: Mapping[str, float], num_experts: int | None = None) -> dict[int, float]:
    out: dict[int, float] = {}
    for part, v in values.items():
        e = expert_index(part)
        if e is not None and (num_experts is None or e < num_experts):
            out[e] = v
    return out


def telemetry_reading(message: Telemetry) -> TelemetryReading:
    """The domain reading of a Telemetry message."""
    return TelemetryReading(
        device_id=message.device_id,
        device_type=message.device_type,
        compute_ms_per_sample=message.compute_ms_per_sample,
        bandwidth_kbps=message.bandwidth_kbps,
        memory_mb=message.memory_mb,
        battery=message.battery,
        num_samples=message.num_samples,
        routing_histogram=tuple(message.routing_histogram),
    )


def telemetry_message(
    reading: TelemetryReading,
    *,
    round: int,
    timestamp: float,
    gate_version: int,
    losses: LossReport,
) -> Telemetry:
    """The Telemetry message of a reading for `round`, with the last training's losses (the
    one builder devices and the simulation's traffic count use)."""
    return Telemetry(
        message_id=f"tm-{reading.device_id}-r{round}",
        device_id=reading.device_id,
        round=round,
        timestamp=timestamp,
        device_type=reading.device_type,
        compute_ms_per_sample=reading.compute_ms_per_sample,
        bandwidth_kbps=reading.bandwidth_kbps,
        memory_mb=reading.memory_mb,
        battery=reading.battery,
        num_samples=reading.num_samples,
        routing_histogram=reading.routing_histogram,
        gate_version=gate_version,
        expert_loss=dict(losses.expert_loss),
        data_loss=losses.data_loss,
        expert_data_loss=dict(losses.expert_data_loss),
    )


def _measured(value: float) -> float | None:
    """The wire's -1 ("not measured") as None."""
    return None if value < 0 else value


def expert_losses(message: Telemetry, num_experts: int | None = None) -> dict[int, float]:
    """The per-expert local losses a Telemetry message reports, by expert index."""
    return _by_index(message.expert_loss, num_experts)


def profile_snapshot(
    profile: ClientProfile, *, message_id: str, timestamp: float, round: int = 0
) -> ProfileSnapshot:
    """The wire form of a profile (Kafka `profiles`, key = device id)."""
    return ProfileSnapshot(
        message_id=message_id,
        device_id=profile.device_id,
        round=round,
        timestamp=timestamp,
        device_type=profile.device_type,
        compute_ms_per_sample=profile.compute_ms_per_sample,
        bandwidth_kbps=profile.bandwidth_kbps,
        memory_mb=profile.memory_mb,
        capacity=profile.capacity,
        battery=profile.battery,
        online=profile.online,
        num_samples=profile.num_samples,
        completion_rate=profile.completion_rate,
        rounds_assigned=profile.rounds_assigned,
        rounds_completed=profile.rounds_completed,
        last_seen=profile.last_seen,
        routing_histogram=tuple(profile.routing_histogram),
        expert_quality=_by_part(profile.expert_quality),
        expert_trials={expert_part_id(e): int(n) for e, n in profile.expert_trials.items()},
        last_round=profile.last_round,
        data_loss=-1.0 if profile.data_loss is None else profile.data_loss,
        expert_data_loss=_by_part(profile.expert_data_loss),
    )


def client_profile(snapshot: ProfileSnapshot) -> ClientProfile:
    """The domain profile of a ProfileSnapshot (inverse of `profile_snapshot`)."""
    return ClientProfile(
        device_id=snapshot.device_id,
        device_type=snapshot.device_type,
        compute_ms_per_sample=snapshot.compute_ms_per_sample,
        bandwidth_kbps=snapshot.bandwidth_kbps,
        memory_mb=snapshot.memory_mb,
        capacity=snapshot.capacity,
        battery=snapshot.battery,
        online=snapshot.online,
        num_samples=snapshot.num_samples,
        completion_rate=snapshot.completion_rate,
        rounds_assigned=snapshot.rounds_assigned,
        rounds_completed=snapshot.rounds_completed,
        last_seen=snapshot.last_seen,
        last_round=snapshot.last_round,
        routing_histogram=tuple(snapshot.routing_histogram),
        expert_quality=_by_index(snapshot.expert_quality),
        expert_trials={e: int(n) for e, n in _by_index(snapshot.expert_trials).items()},
        data_loss=_measured(snapshot.data_loss),
        expert_data_loss=_by_index(snapshot.expert_data_loss),
    )


def expert_load_message(
    state: ExpertLoadState, *, message_id: str, timestamp: float, round: int, device_id: str
) -> ExpertLoad:
    """The wire form of the global expert load (Kafka `expert-load`, key = "load").

    `cv` and `max_mean` are the imbalance of clients per expert: of the current round's
    assignment when there is one, else of the EWMA over closed rounds.
    """
    counts = state.assigned_clients if state.assigned_clients.any() else state.clients_ewma
    cv, max_mean = imbalance(counts)
    return ExpertLoad(
        message_id=message_id,
        device_id=device_id,
        round=round,
        timestamp=timestamp,
        assigned_clients=tuple(int(x) for x in state.assigned_clients),
        accepted_updates=tuple(int(x) for x in state.accepted_updates),
        samples_routed=tuple(float(x) for x in state.samples_routed),
        rounds_since_update=tuple(int(x) for x in state.rounds_since_update),
        cv=cv,
        max_mean=max_mean,
        clients_ewma=tuple(float(x) for x in state.clients_ewma),
        rounds_closed=state.rounds_closed,
    )


def expert_load_state(message: ExpertLoad) -> ExpertLoadState:
    """The domain load state of an ExpertLoad message (inverse of `expert_load_message`)."""
    e = len(message.assigned_clients)
    ewma = message.clients_ewma or (0.0,) * e
    return ExpertLoadState(
        assigned_clients=np.asarray(message.assigned_clients, dtype=np.int64),
        accepted_updates=np.asarray(message.accepted_updates, dtype=np.int64),
        clients_ewma=np.asarray(ewma, dtype=np.float64),
        samples_routed=np.asarray(message.samples_routed, dtype=np.float64),
        rounds_since_update=np.asarray(message.rounds_since_update, dtype=np.int64),
        rounds_closed=message.rounds_closed,
    )


def reported_loss(loss: float) -> float:
    """A loss as a device reports it: a diverged (non-finite) or negative one reads 0.

    The wire refuses such losses; the diverged weights themselves still travel and the
    aggregator rejects them as non-finite, so a diverging device costs its update, never the
    fleet.
    """
    return loss if math.isfinite(loss) and loss >= 0 else 0.0


def reported_losses(result: LocalResult) -> dict[int, float]:
    """The per-expert losses of a training worth reporting (finite and >= 0), by expert."""
    return {e: v for e, v in result.expert_loss.items() if math.isfinite(v) and v >= 0}


@dataclass(frozen=True, slots=True)
class LossReport:
    """What a device's next Telemetry reports of its last training (wire form: by part id).

    Attributes:
        expert_loss: mean loss after training of the samples routed to each trained expert.
        data_loss: RMS loss of its data under the global parts it started from (-1: none).
        expert_data_loss: the same per trained expert.
    """

    expert_loss: Mapping[str, float] = field(default_factory=dict)
    data_loss: float = -1.0
    expert_data_loss: Mapping[str, float] = field(default_factory=dict)


def loss_report(result: LocalResult) -> LossReport:
    """The report of one training (only finite values)."""
    data_loss, expert_data_loss = reported_data_losses(result)
    return LossReport(
        expert_loss=_by_part(reported_losses(result)),
        data_loss=-1.0 if data_loss is None else data_loss,
        expert_data_loss=_by_part(expert_data_loss),
    )


def reported_data_losses(result: LocalResult) -> tuple[float | None, dict[int, float]]:
    """The pre-training RMS losses of a training worth reporting: overall (None when not
    finite) and per expert (finite ones), by expert."""
    overall = result.initial_loss if math.isfinite(result.initial_loss) else None
    per_expert = {
        e: v for e, v in result.initial_expert_loss.items() if math.isfinite(v) and v >= 0
    }
    return overall, per_expert


def data_losses(
    message: Telemetry, num_experts: int | None = None
) -> tuple[float | None, dict[int, float]]:
    """The pre-training RMS losses a Telemetry message reports (overall, per expert index)."""
    return _measured(message.data_loss), _by_index(message.expert_data_loss, num_experts)


def update_id(device: str, round: int) -> str:
    """The id of `device`'s update of `round` (stable across resends and restarts)."""
    return f"up-{device}-r{round}"


def model_update(
    result: LocalResult,
    *,
    device_id: str,
    round: int,
    experts: Sequence[int],
    base_versions: Mapping[str, int],
    train_seconds: float,
    timestamp: float,
) -> ModelUpdate:
    """A device's upload of one local training: `shared` (weight = its sample count, loss =
    its mean local loss) and each trained expert (weight = samples routed to it, loss = their
    mean loss, 0 when none were routed), each based on the version it trained from."""
    parts = [
        PartPayload(
            part=SHARED,
            base_version=base_versions[SHARED],
            weight=float(result.num_samples),
            loss=reported_loss(result.train_loss),
            tensors=result.parts[SHARED],
        )
    ]
    for expert in experts:
        part = expert_part_id(expert)
        parts.append(
            PartPayload(
                part=part,
                base_version=base_versions[part],
                weight=float(result.expert_samples.get(expert, 0)),
                loss=reported_loss(result.expert_loss.get(expert, 0.0)),
                tensors=result.parts[part],
            )
        )
    return ModelUpdate(
        message_id=update_id(device_id, round),
        device_id=device_id,
        round=round,
        timestamp=timestamp,
        num_samples=result.num_samples,
        train_seconds=train_seconds,
        parts=tuple(parts),
    )
