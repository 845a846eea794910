"""The dedup ledger: idempotent records, a bounded window, plain-data round trips."""

from __future__ import annotations

import json
from typing import Any

import pytest

from moe.aggregation import UpdateKey, UpdateLedger
from moe.aggregation.errors import SnapshotError
from moe.errors import InvalidArgumentError, UpdateRejected


def test_a_recorded_key_is_seen_and_recording_it_again_changes_nothing() -> None:
    ledger = UpdateLedger()
    key = UpdateKey(3, "dev-1", "expert-2")
    assert ledger.check(key) == "new"
    assert not ledger.seen(key)
    ledger.record(key)
    assert ledger.seen(key)
    before = ledger.to_plain()
    with pytest.raises(UpdateRejected) as info:
        ledger.record(key)
    assert info.value.reason == "duplicate"
    assert ledger.to_plain() == before
    assert len(ledger) == 1


def test_keys_differ_by_round_device_and_part() -> None:
    ledger = UpdateLedger()
    ledger.record(UpdateKey(3, "dev-1", "shared"))
    for other in (
        UpdateKey(2, "dev-1", "shared"),
        UpdateKey(3, "dev-2", "shared"),
        UpdateKey(3, "dev-1", "expert-0"),
    ):
        assert ledger.check(other) == "new"


def test_rounds_older_than_the_window_are_forgotten_and_stale() -> None:
    ledger = UpdateLedger(window=2)
    ledger.record(UpdateKey(1, "a", "shared"))
    ledger.record(UpdateKey(2, "a", "shared"))
    assert ledger.seen(UpdateKey(1, "a", "shared"))
    ledger.advance(3)  # remembers rounds 2 and 3
    assert ledger.latest_round == 3
    assert ledger.check(UpdateKey(1, "a", "shared")) == "stale"
    assert ledger.check(UpdateKey(1, "new-device", "shared")) == "stale"
    assert ledger.check(UpdateKey(2, "a", "shared")) == "duplicate"
    assert len(ledger) == 1
    with pytest.raises(UpdateRejected) as info:
        ledger.record(UpdateKey(1, "b", "shared"))
    assert info.value.reason == "stale"
    assert len(ledger) == 1


def test_recording_a_newer_round_moves_the_window() -> None:
    ledger = UpdateLedger(window=1)
    ledger.record(UpdateKey(5, "a", "shared"))
    ledger.record(UpdateKey(6, "a", "shared"))
    assert ledger.check(UpdateKey(5, "a", "shared")) == "stale"
    assert ledger.seen(UpdateKey(6, "a", "shared"))


def test_advancing_backwards_changes_nothing() -> None:
    ledger = UpdateLedger(window=3)
    ledger.advance(10)
    ledger.record(UpdateKey(9, "a", "shared"))
    ledger.advance(4)
    assert ledger.latest_round == 10
    assert ledger.seen(UpdateKey(9, "a", "shared"))


def test_memory_is_bounded_by_the_window() -> None:
    ledger = UpdateLedger(window=3)
    for round_id in range(100):
        for device in range(20):
            ledger.record(UpdateKey(round_id, f"dev-{device}", "shared"))
        assert len(ledger) <= 3 * 20
    assert len(ledger) == 60


def test_plain_round_trip_through_json_is_identical() -> None:
    ledger = UpdateLedger(window=3)
    for round_id in range(5):
        for device in ("b", "a", "c"):
            ledger.record(UpdateKey(round_id, device, "expert-1"))
    data = ledger.to_plain()
    restored = UpdateLedger.from_plain(json.loads(json.dumps(data)))
    assert restored.to_plain() == data
    assert restored.window == 3
    assert restored.latest_round == 4
    assert restored.seen(UpdateKey(4, "a", "expert-1"))
    assert restored.check(UpdateKey(1, "a", "expert-1")) == "stale"
    # Deterministic: insertion order does not show in the plain form.
    assert data["keys"] == sorted(data["keys"])


def test_empty_ledger_round_trips() -> None:
    data = UpdateLedger().to_plain()
    assert UpdateLedger.from_plain(json.loads(json.dumps(data))).to_plain() == data


def good_plain() -> dict[str, Any]:
    return {"format": 1, "window": 2, "latest": 5, "keys": [[5, "a", "shared"]]}


@pytest.mark.parametrize(
    "change",
    [
        {"format": 99},
        {"window": 0},
        {"window": "2"},
        {"latest": "5"},
        {"latest": True},
        {"keys": {"5": []}},
        {"keys": [[5, "a"]]},
        {"keys": [["5", "a", "shared"]]},
        {"keys": [[5, 1, "shared"]]},
        {"keys": [[3, "a", "shared"]]},  # outside the window
        {"keys": [[6, "a", "shared"]]},  # newer than latest
        {"latest": None},
    ],
)
def test_malformed_plain_data_is_a_snapshot_error(change: dict[str, Any]) -> None:
    UpdateLedger.from_plain(good_plain())
    with pytest.raises(SnapshotError):
        UpdateLedger.from_plain({**good_plain(), **change})


def test_missing_window_is_a_snapshot_error() -> None:
    data = good_plain()
    del data["window"]
    with pytest.raises(SnapshotError):
        UpdateLedger.from_plain(data)


@pytest.mark.parametrize("window", [0, -1, 1.5, True])
def test_bad_window_is_an_invalid_argument(window: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        UpdateLedger(window=window)
