"""One federated run in process: the bus's round protocol, step by step, without a broker.

`run_simulation` composes exactly the pure pieces the services and devices run (the scenario,
profiles, expert load, matching, local training, per-part aggregation, the wire codec for byte
counts), in the order the round protocol on the bus runs them, so for one `ScenarioConfig` and
strategy it reaches the same accuracy as the services after the same rounds (the parity test).
Only the clock differs: time here is the simulated round time of the fleet model, and late
means ``scenario.round_time_s(device, experts, r) > config.deadline_s`` (the device's real
conditions of round r, `moe.dynamics`, which the matcher only estimates), where the bus judges the
gateway's arrival time against the wall deadline (a device there waits its simulated round
time × time_scale before it uploads).

Genesis (round 0; protocol steps 1, 3, 4, 7, 9):

- step 1/3: every part is created at version 0 from ``scenario.initial_parts()`` (one
  `PartAggregator` per part, `clipped-fedavg` as the aggregator service's default), round 0
  is opened with no devices and every part closes at once (quorum 0): no new version;
- step 7: the load monitor sees RoundClosed(0): ``on_round_closed`` on the empty load (so the
  first real round starts with ``rounds_closed == 1``, as on the bus);
- step 9: the initial model is evaluated (`RunResult.initial_accuracy`).

Round r = 1..R:

1. Availability (step 5): ``scenario.online(r)`` decides who announces itself for round r.
2. Telemetry (steps 5, 6): an online device reports ``scenario.telemetry(i, global parts, r)``
   (what it measured of itself in round r − 1 and its routing histogram under the current
   global model), folded into its
   profile with `fold_telemetry`; an offline device that has a profile is folded
   ``fold_status(online=False)`` (its DeviceStatus); one never seen stays unknown.
3. Matching (step 8): candidates = the profiles that announced themselves for r, sorted by
   device id; ``build_matching_input(candidates, load, round=r, deadline_s=config.deadline_s,
   shared_bytes / expert_bytes from scenario.part_bytes, epochs=config.epochs)``; the
   assignment is ``strategy.assign(problem, scenario.strategy_rng(r))``.
4. Round opened (step 1): every part opens round r (the markers) with its assignments: each
   device assigned the part, capped at the samples its profile holds (the marker's
   `assigned`); each device with at least one expert gets an Assignment (devices with none
   get nothing and do not train).
5. Load (step 7): ``on_assignment`` with the round's assignment.
6. Devices (step 2), sorted by id: ``train_local(scenario.model, global parts, x_i, y_i,
   experts, seed=scenario.train_seed(r, i), epochs/batch_size/lr of the config)``; the upload
   is the ModelUpdate the device would send (shared: weight = num_samples, loss = train
   loss; expert e: weight = ``expert_samples[e]``, loss = ``expert_loss[e]``), counted in
   bytes as the records that carry it (`wire_bytes`: its encoding, or its chunks' when it is
   over a record, as a large-model update is). A malicious device (`moe.simulation.attacks`,
   only when an `Adversary` is given) trains on flipped labels or poisons the upload's
   tensors.
7. Aggregation (step 3): an update is late iff the device's simulated round time exceeds the
   deadline; late updates are never offered. In-time ones are offered part by part to the
   part's `PartAggregator` (base version = the version the device trained from); then every
   part closes (a new version where something with weight > 0 was applied).
8. Load (step 7): ``on_part_closed(expert, applied, samples)`` for every expert part with
   applied updates (the PartVersion's contributors and samples), then ``on_round_closed``
   (the RoundClosed, step 4).
9. Outcomes (step 6): each assigned device's profile folds ``fold_round_outcome(assigned,
   completed_in_time = its update was applied, expert_losses = its LocalResult.expert_loss)``.
10. Evaluation (step 9): the global model on the scenario's test set → `RoundRecord`.

Bytes: down = the PartVersion messages of ``shared`` and the assigned experts each assigned
device receives (encoded once per part version, as the retained message is), up = each
device's encoded ModelUpdate (late ones too: they were sent); control = every other message
that crosses MQTT in the round (status, telemetry, the round marker with the gate rows,
assignments, acks: `moe.simulation.traffic`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from moe.aggregation import PartAggregator
from moe.aggregation.base import AggregationRule
from moe.aggregation.clipping import ClippedFedAvg
from moe.load import (
    ExpertLoadState,
    imbalance,
    on_assignment,
    on_part_closed,
    on_round_closed,
)
from moe.matching import MatchingStrategy, build_matching_input, make_strategy
from moe.parts import SHARED, expert_index, expert_part_id, model_layout, part_ids
from moe.profiles import (
    ClientProfile,
    TelemetryReading,
    fold_round_outcome,
    fold_status,
    fold_telemetry,
)
from moe.scenario import Scenario, ScenarioConfig, build_scenario, device_id, device_index
from moe.simulation.attacks import Adversary, flip_labels
from moe.simulation.records import RoundRecord, RunResult
from moe.simulation.traffic import RoundTraffic, control_bytes
from moe.training import LocalResult, evaluate, train_local
from moe.wire import LossReport, loss_report, model_update, reported_data_losses, reported_losses
from schemas import Message, ModelUpdate, PartVersion
from schemas.chunks import encode_records
from schemas.messages import gate_row

OnRound = Callable[[RoundRecord], None]
Float32Array = NDArray[np.float32]

AGGREGATOR_ID = "aggregator"


@dataclass(slots=True)
class _DeviceRound:
    """One assigned device's round: what it trained and whether it counted."""

    index: int
    experts: list[int]
    base_versions: dict[str, int]
    result: LocalResult
    time_s: float
    late: bool
    applied: bool = False


@dataclass(slots=True)
class _World:
    """The run's state: what the aggregators, the profiler and the load monitor hold."""

    scenario: Scenario
    aggregators: dict[str, PartAggregator]
    load: ExpertLoadState
    profiles: dict[str, ClientProfile] = field(default_factory=dict)
    clock: float = 0.0
    version_bytes: dict[tuple[str, int], int] = field(default_factory=dict)
    # The losses of each device's last training, until its next telemetry reports them.
    unreported: dict[str, LossReport] = field(default_factory=dict)
    adversary: Adversary | None = None

    @property
    def parts(self) -> dict[str, dict[str, Float32Array]]:
        """The global model: every part's current version (read-only arrays, not copies)."""
        return {pid: dict(agg.weights) for pid, agg in self.aggregators.items()}

    def part_version_bytes(self, pid: str, round_: int) -> int:
        """Encoded size of the PartVersion message of `pid`'s current version."""
        key = (pid, self.aggregators[pid].version)
        if key not in self.version_bytes:
            self.version_bytes[key] = wire_bytes(self._version(pid, round_))
        return self.version_bytes[key]

    def _version(self, pid: str, round_: int) -> PartVersion:
        agg = self.aggregators[pid]
        return PartVersion(
            message_id=f"{pid}@{agg.version}",
            device_id=AGGREGATOR_ID,
            round=round_,
            timestamp=self.clock,
            part=pid,
            version=agg.version,
            layout_version=self.scenario.model.layout_version,
            tensors=dict(agg.weights),
        )


def wire_bytes(message: Message) -> int:
    """Bytes `message` takes on the wire: its encoding, or its chunks' when it is over one
    record (a large-model part: `moe.presets`), as the devices and services send it."""
    return sum(len(record) for record in encode_records(message))


def run_simulation(
    config: ScenarioConfig,
    strategy: MatchingStrategy | str,
    rounds: int,
    *,
    on_round: OnRound | None = None,
    scenario: Scenario | None = None,
    rule: AggregationRule | None = None,
    adversary: Adversary | None = None,
) -> RunResult:
    """Run `rounds` federated rounds of `config` with `strategy` (see the module docstring).

    Args:
        config: the scenario (data, fleet, model, seeds, deadline, local training).
        strategy: a matching strategy, or its name (`moe.matching.make_strategy`).
        rounds: R, rounds after the genesis round.
        on_round: called with each round's record as soon as it is measured.
        scenario: the world `config` builds, when the caller has it already (must match).
        rule: the aggregation rule of every part (`ClippedFedAvg()`, the aggregator
            service's default, when None).
        adversary: malicious devices and their attack (none when None).

    Returns:
        The run's per-round records. Deterministic: the same arguments give the same result,
        and runs of different strategies with one config share the online sets, data,
        initial weights and training seeds.
    """
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    scenario = scenario if scenario is not None else build_scenario(config)
    if scenario.config != config:
        raise ValueError("scenario was built from a different config")
    matcher = make_strategy(strategy) if isinstance(strategy, str) else strategy
    world = _genesis(scenario, rule if rule is not None else ClippedFedAvg())
    world.adversary = adversary
    initial_accuracy, _ = evaluate(
        scenario.model, world.parts, scenario.data.test_x, scenario.data.test_y
    )
    whole = sum(world.part_version_bytes(pid, 0) for pid in world.aggregators)
    records: list[RoundRecord] = []
    for r in range(1, rounds + 1):
        record = _round(world, matcher, r)
        records.append(record)
        if on_round is not None:
            on_round(record)
    return RunResult(
        regime=config.regime,
        strategy=matcher.name,
        seed=config.seed,
        records=tuple(records),
        whole_model_bytes=whole,
        initial_accuracy=initial_accuracy,
    )


def _genesis(scenario: Scenario, rule: AggregationRule) -> _World:
    """Round 0: every part at version 0, the round opened with no devices and closed."""
    layout = model_layout(scenario.model)
    initial = scenario.initial_parts()
    # Each aggregator keeps its own copy, so each initial part is dropped once copied: the
    # model is held once, not twice, at any time (541 MB at the large preset, `moe.presets`).
    aggregators = {
        pid: PartAggregator(pid, layout[pid], initial.pop(pid), rule, version=0)
        for pid in part_ids(scenario.model)
    }
    for agg in aggregators.values():
        agg.open_round(0)
        agg.close()  # quorum 0: closes at once, no new version
    load = on_round_closed(ExpertLoadState.empty(scenario.model.num_experts))
    return _World(scenario=scenario, aggregators=aggregators, load=load)


def _announce(
    world: _World, r: int, online: Sequence[int]
) -> tuple[list[ClientProfile], list[tuple[TelemetryReading, LossReport]], frozenset[str]]:
    """Steps 5-6: telemetry of the online devices, status of the others; the candidates,
    what the online devices reported and which of them were not online before."""
    sc = world.scenario
    parts = world.parts
    online_set = {int(i) for i in online}
    reports: list[tuple[TelemetryReading, LossReport]] = []
    came_online: set[str] = set()
    for i in range(sc.config.num_devices):
        dev = device_id(i)
        if i in online_set:
            before = world.profiles.get(dev)
            if before is None or not before.online:
                came_online.add(dev)
            reading = sc.telemetry(i, parts, r)
            reports.append((reading, world.unreported.pop(dev, LossReport())))
            world.profiles[dev] = fold_telemetry(world.profiles.get(dev), reading, now=world.clock)
        elif dev in world.profiles:
            world.profiles[dev] = fold_status(world.profiles[dev], online=False, now=world.clock)
    announced = sorted(device_id(i) for i in online_set)
    candidates = [world.profiles[dev] for dev in announced if world.profiles[dev].online]
    return candidates, reports, frozenset(came_online)


def _train(world: _World, r: int, index: int, experts: list[int]) -> _DeviceRound:
    """Step 2, one device: local training from the current global parts."""
    sc, cfg = world.scenario, world.scenario.config
    data = sc.data.devices[index]
    labels = data.y
    if world.adversary is not None and world.adversary.poisons_data(index):
        labels = flip_labels(labels, sc.model.num_classes)
    result = train_local(
        sc.model,
        world.parts,
        data.x,
        labels,
        experts,
        seed=sc.train_seed(r, index),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
    )
    time_s = sc.round_time_s(index, experts, r)
    bases = {pid: world.aggregators[pid].version for pid in _trained_parts(experts)}
    return _DeviceRound(index, experts, bases, result, time_s, late=time_s > cfg.deadline_s)


def _trained_parts(experts: Sequence[int]) -> list[str]:
    return [SHARED, *(expert_part_id(e) for e in experts)]


def _update(world: _World, r: int, device: _DeviceRound) -> ModelUpdate:
    """The ModelUpdate the device uploads (the one builder devices on the bus use too),
    poisoned when the device is malicious."""
    update = model_update(
        device.result,
        device_id=device_id(device.index),
        round=r,
        experts=device.experts,
        base_versions=device.base_versions,
        train_seconds=device.time_s,
        timestamp=world.clock + device.time_s,
    )
    adversary = world.adversary
    if adversary is None or device.index not in adversary.devices:
        return update
    parts = []
    for payload in update.parts:
        base = world.aggregators[payload.part].weights
        poisoned = adversary.poison(device.index, r, payload.part, base, payload.tensors)
        parts.append(payload if poisoned is None else replace(payload, tensors=poisoned))
    return replace(update, parts=tuple(parts))


def _offer(world: _World, r: int, update: ModelUpdate) -> bool:
    """Step 3: offer every part of an in-time update; True when all were applied."""
    verdicts = [
        world.aggregators[p.part]
        .offer(r, update.device_id, p.tensors, p.weight, p.base_version)
        .status
        for p in update.parts
    ]
    return all(v == "applied" for v in verdicts)


def _round(world: _World, matcher: MatchingStrategy, r: int) -> RoundRecord:
    sc, cfg = world.scenario, world.scenario.config
    e_count = sc.model.num_experts
    candidates, reports, came_online = _announce(world, r, [int(i) for i in sc.online(r)])
    opened_versions = {pid: agg.version for pid, agg in world.aggregators.items()}
    gates = {pid: row for pid, agg in world.aggregators.items() if (row := gate_row(agg.weights))}
    if candidates:
        problem = build_matching_input(
            candidates,
            world.load,
            round=r,
            deadline_s=cfg.deadline_s,
            shared_bytes=sc.part_bytes[SHARED],
            expert_bytes=sc.part_bytes[expert_part_id(0)],
            epochs=cfg.epochs,
        )
        x = np.asarray(matcher.assign(problem, sc.strategy_rng(r)), dtype=bool)
    else:
        x = np.zeros((0, e_count), dtype=bool)
    world.load = on_assignment(world.load, x)
    load_cv, _ = imbalance(x.sum(axis=0))
    indices = [_index(p.device_id) for p in candidates]
    assigned = [
        (indices[row], [int(e) for e in np.flatnonzero(x[row])])
        for row in range(len(candidates))
        if x[row].any()
    ]
    caps = _assigned_caps(world, assigned)
    for pid, agg in world.aggregators.items():
        agg.open_round(r, caps[pid])
    bytes_down = bytes_up = 0
    devices: list[_DeviceRound] = []
    updates: list[ModelUpdate] = []
    for index, experts in sorted(assigned):
        bytes_down += sum(world.part_version_bytes(pid, r) for pid in _trained_parts(experts))
        device = _train(world, r, index, experts)
        update = _update(world, r, device)
        bytes_up += wire_bytes(update)
        devices.append(device)
        updates.append(update)
    for device, update in zip(devices, updates, strict=True):
        if not device.late:
            device.applied = _offer(world, r, update)
    for pid, agg in world.aggregators.items():
        stats = agg.close().stats
        e = expert_index(pid)
        if e is not None and stats.applied > 0:
            world.load = on_part_closed(world.load, e, stats.applied, stats.total_weight)
    world.load = on_round_closed(world.load)
    for device in devices:
        dev = device_id(device.index)
        losses = reported_losses(device.result)
        data_loss, expert_data_loss = reported_data_losses(device.result)
        world.unreported[dev] = loss_report(device.result)
        world.profiles[dev] = fold_round_outcome(
            world.profiles[dev],
            round=r,
            assigned=True,
            completed_in_time=device.applied,
            expert_losses=losses,
            data_loss=data_loss,
            expert_data_loss=expert_data_loss,
        )
    control = control_bytes(
        RoundTraffic(
            round=r,
            online=reports,
            assigned=[(device_id(d.index), d.experts, _trained_parts(d.experts)) for d in devices],
            model_versions=opened_versions,
            gates=gates,
            came_online=came_online,
        )
    )
    late = sum(d.late for d in devices)
    in_time = [d.time_s for d in devices if not d.late]
    round_time = cfg.deadline_s if late else max(in_time, default=0.0)
    world.clock += round_time
    accuracy, loss = evaluate(sc.model, world.parts, sc.data.test_x, sc.data.test_y)
    return RoundRecord(
        round=r,
        accuracy=accuracy,
        load_cv=load_cv,
        late_updates=late,
        updates_applied=sum(d.applied for d in devices),
        bytes_down=bytes_down,
        bytes_up=bytes_up,
        bytes_control=control,
        round_time_s=round_time,
        loss=loss,
        devices_online=len(candidates),
        devices_assigned=len(devices),
        updates_rejected=sum(1 for d in devices if not d.late and not d.applied),
    )


def _assigned_caps(
    world: _World, assigned: Sequence[tuple[int, list[int]]]
) -> dict[str, dict[str, float]]:
    """Per part, its assigned devices and each one's weight cap: the samples its profile
    holds (what the matcher's markers carry on the bus)."""
    caps: dict[str, dict[str, float]] = {pid: {} for pid in world.aggregators}
    for index, experts in assigned:
        dev = device_id(index)
        cap = float(world.profiles[dev].num_samples)
        for pid in _trained_parts(experts):
            caps[pid][dev] = cap
    return caps


def _index(dev: str) -> int:
    index = device_index(dev)
    if index is None:
        raise ValueError(f"not a scenario device id: {dev!r}")
    return index
