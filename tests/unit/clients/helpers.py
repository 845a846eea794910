"""A small scenario and message builders shared by the clients' unit tests."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from moe.parts import part_ids
from moe.scenario import Scenario, ScenarioConfig, build_scenario, device_id
from schemas.messages import Assignment, PartVersion, UpdateAck

CONFIG = ScenarioConfig(num_devices=6, num_experts=4, seed=1)


def scenario() -> Scenario:
    return build_scenario(CONFIG)


def versions(sc: Scenario, version: int = 0) -> dict[str, int]:
    return dict.fromkeys(part_ids(sc.model), version)


def part_version(
    part: str, version: int, tensors: Mapping[str, np.ndarray], *, layout_version: int = 1
) -> PartVersion:
    return PartVersion(
        message_id=f"pv-{part}-{version}", device_id="aggregator", round=0, timestamp=1.0,
        part=part, version=version, layout_version=layout_version, tensors=tensors,
    )  # fmt: skip


def assignment(
    device: int, round_: int, experts: tuple[int, ...], model_versions: Mapping[str, int]
) -> Assignment:
    return Assignment(
        message_id=f"as-{device}-{round_}", device_id=device_id(device), round=round_,
        timestamp=1.0, experts=experts, deadline=100.0, model_versions=model_versions,
    )  # fmt: skip


def ack(update_id: str, part: str, status: str = "applied", device: int = 3) -> UpdateAck:
    return UpdateAck(
        message_id=f"ack-{update_id}-{part}-{status}", device_id=device_id(device), round=1,
        timestamp=1.0, update_id=update_id, part=part, status=status,
    )  # fmt: skip
