"""Expert load: pure transitions and the imbalance measures."""

from __future__ import annotations

import numpy as np
import pytest

from moe.load import (
    ExpertLoadState,
    imbalance,
    on_assignment,
    on_part_closed,
    on_round_closed,
    on_update_applied,
)


def test_a_round_of_events() -> None:
    s0 = ExpertLoadState.empty(3)
    x = np.array([[1, 0, 1], [1, 1, 0]], dtype=bool)
    s1 = on_assignment(s0, x)
    assert s1.assigned_clients.tolist() == [2, 1, 1]
    assert s0.assigned_clients.tolist() == [0, 0, 0]  # the old state is untouched
    s2 = on_update_applied(s1, 0, 30.0)
    s2 = on_update_applied(s2, 0, 10.0)
    s2 = on_update_applied(s2, 1, 5.0)
    assert s2.accepted_updates.tolist() == [2, 1, 0]
    assert s2.pending_updates.tolist() == [0, 0, 1]
    assert s2.samples_routed.tolist() == [40.0, 5.0, 0.0]
    s3 = on_round_closed(s2, alpha=0.5)
    assert s3.rounds_closed == 1
    assert s3.clients_ewma.tolist() == [2.0, 1.0, 1.0]  # the first round seeds the EWMA
    assert s3.rounds_since_update.tolist() == [0, 0, 1]
    assert s3.assigned_clients.tolist() == [0, 0, 0]
    assert s3.accepted_updates.tolist() == [0, 0, 0]
    assert s3.samples_routed.tolist() == [40.0, 5.0, 0.0]  # cumulative
    s4 = on_round_closed(on_assignment(s3, np.array([[0, 0, 1]], dtype=bool)), alpha=0.5)
    assert s4.clients_ewma.tolist() == [1.0, 0.5, 1.0]
    assert s4.rounds_since_update.tolist() == [1, 1, 2]
    s5 = on_round_closed(on_update_applied(s4, 2, 1.0))
    assert s5.rounds_since_update.tolist() == [2, 2, 0]


def test_assignments_in_batches_add_up() -> None:
    s = ExpertLoadState.empty(2)
    s = on_assignment(s, np.array([[1, 0]], dtype=bool))
    s = on_assignment(s, np.array([[1, 1]], dtype=bool))
    assert s.assigned_clients.tolist() == [2, 1]


def test_state_arrays_are_read_only_copies() -> None:
    counts = np.array([1, 2])
    s = ExpertLoadState(counts, counts, np.zeros(2), np.zeros(2), counts)
    counts[0] = 99
    assert s.assigned_clients[0] == 1
    with pytest.raises(ValueError):
        s.assigned_clients[0] = 5


def test_validation() -> None:
    s = ExpertLoadState.empty(2)
    with pytest.raises(ValueError, match="shape"):
        on_assignment(s, np.ones((1, 3), dtype=bool))
    with pytest.raises(ValueError, match="range"):
        on_update_applied(s, 2, 1.0)
    with pytest.raises(ValueError, match="samples"):
        on_update_applied(s, 0, -1.0)
    with pytest.raises(ValueError, match="alpha"):
        on_round_closed(s, alpha=1.5)
    with pytest.raises(ValueError, match="one length"):
        ExpertLoadState(np.zeros(2), np.zeros(3), np.zeros(2), np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError):
        ExpertLoadState.empty(0)


@pytest.mark.parametrize(
    ("counts", "cv", "max_mean"),
    [
        ([3, 3, 3], 0.0, 1.0),
        ([0, 0, 0], 0.0, 0.0),
        ([], 0.0, 0.0),
        ([2, 0], 1.0, 2.0),
        ([4, 0, 0, 0], np.sqrt(3.0), 4.0),
        ([1, 2, 3], np.sqrt(2.0 / 3.0) / 2.0, 1.5),
    ],
)
def test_imbalance(counts: list[int], cv: float, max_mean: float) -> None:
    got_cv, got_mm = imbalance(counts)
    assert got_cv == pytest.approx(cv)
    assert got_mm == pytest.approx(max_mean)


def test_part_closed_equals_its_updates() -> None:
    base = ExpertLoadState.empty(3)
    one_by_one = on_update_applied(on_update_applied(base, 1, 5.0), 1, 7.0)
    at_once = on_part_closed(base, 1, 2, 12.0)
    for name in ("accepted_updates", "samples_routed", "rounds_since_update"):
        np.testing.assert_array_equal(getattr(at_once, name), getattr(one_by_one, name))
    assert on_part_closed(base, 0, 0, 0.0) is base
