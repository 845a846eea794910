"""One round-time model: what the matcher predicts is what the fleet charges."""

from __future__ import annotations

import numpy as np

from moe.fleet import max_experts_in_time, round_time_s
from moe.matching import deadline_capacity
from moe.parts import SHARED, expert_part_id
from moe.scenario import ScenarioConfig, build_scenario


def test_deadline_capacity_matches_round_time_exactly() -> None:
    for seed in range(4):
        sc = build_scenario(ScenarioConfig(regime="fleet", num_devices=40, seed=seed))
        n = [d.num_samples for d in sc.data.devices]
        for deadline in (0.3, 0.8, 1.5, 3.0):
            k = deadline_capacity(
                [c.compute_ms_per_sample for c in sc.fleet],
                [c.bandwidth_kbps for c in sc.fleet],
                n,
                deadline_s=deadline,
                shared_bytes=sc.part_bytes[SHARED],
                expert_bytes=sc.part_bytes[expert_part_id(0)],
                epochs=2,
                max_experts=8,
            )
            for i, cap in enumerate(sc.fleet):
                m = int(k[i])
                t = [round_time_s(cap, n[i], 2, list(range(j)), sc.part_bytes) for j in range(1, 9)]
                # m experts fit, m + 1 do not (m = 0: not even one).
                assert m == sum(1 for tj in t if tj <= deadline)


def test_max_experts_in_time_handles_edges() -> None:
    # No per-expert cost at all: time is flat in m, so all or nothing.
    flat = max_experts_in_time(
        [1.0, 1.0],
        [1000.0, 1000.0],
        [10, 10],
        1,
        shared_bytes=0.0,
        expert_bytes=0.0,
        deadline_s=0.0105,
        max_experts=[3, 5],
        expert_cost=0.0,
    )
    assert flat.tolist() == [3, 5]
    none = max_experts_in_time(
        [1.0],
        [1000.0],
        [10],
        1,
        shared_bytes=0.0,
        expert_bytes=0.0,
        deadline_s=0.001,
        max_experts=3,
        expert_cost=0.0,
    )
    assert none.tolist() == [0]
    capped = max_experts_in_time(
        [1.0],
        [1e6],
        [10],
        1,
        shared_bytes=1.0,
        expert_bytes=1.0,
        deadline_s=100.0,
        max_experts=np.array([2]),
    )
    assert capped.tolist() == [2]
