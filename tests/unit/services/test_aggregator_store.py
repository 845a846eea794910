"""The aggregator's per-part checkpoint files, part state round trips, and settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedmoe.errors import SettingsError
from fedmoe.settings import load_settings
from moe.aggregation import CoordinateMedian, FedAvg, PartAggregator, SnapshotError, TrimmedMean
from moe.aggregation.clipping import ClippedFedAvg
from moe.tensors import PartLayout, TensorSpec
from services.aggregator.part import PartState, RoundTerms
from services.aggregator.settings import AggregatorSettings
from services.aggregator.store import CheckpointConflict, PartStore
from services.checkpoint import CheckpointStore

LAYOUT: PartLayout = {"w": TensorSpec((2, 3)), "b": TensorSpec((3,))}


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.normal(size=s.shape).astype(np.float32) for n, s in LAYOUT.items()}


def state_with_open_round(rule: FedAvg | TrimmedMean | None = None) -> PartState:
    aggregator = PartAggregator("expert-2", LAYOUT, weights(), rule or FedAvg())
    aggregator.open_round(3)
    assert aggregator.offer(3, "dev-1", weights(1), 4.0, 0).status == "applied"
    return PartState(aggregator, partition=5, terms=RoundTerms(123.5, 7))


def test_part_state_survives_a_checkpoint_file(tmp_path: Path) -> None:
    state = state_with_open_round()
    store = CheckpointStore(tmp_path / "expert-2.ckpt")
    store.save(state.to_plain())
    data = store.load()
    assert data is not None
    back = PartState.from_plain(data, LAYOUT, FedAvg())
    assert (back.part_id, back.partition, back.terms, back.open_round) == (
        "expert-2", 5, RoundTerms(123.5, 7), 3,
    )  # fmt: skip
    assert back.aggregator.offer(3, "dev-1", weights(1), 4.0, 0).status == "duplicate"
    assert back.aggregator.offer(3, "dev-2", weights(2), 4.0, 0).status == "applied"
    original = state.aggregator
    assert original.offer(3, "dev-2", weights(2), 4.0, 0).status == "applied"
    ours, theirs = original.close(), back.aggregator.close()
    for name in LAYOUT:
        np.testing.assert_array_equal(ours.tensors[name], theirs.tensors[name])


def test_an_open_round_finishes_under_the_rule_it_started_with() -> None:
    state = state_with_open_round(TrimmedMean(trim_ratio=0.2, max_updates=8))
    back = PartState.from_plain(state.to_plain(), LAYOUT, CoordinateMedian())
    assert back.aggregator.rule == TrimmedMean(trim_ratio=0.2, max_updates=8)


@pytest.mark.parametrize(
    ("key", "value"),
    [("format", 9), ("partition", "5"), ("weights", None), ("part", "expert-3"),
     ("deadline", None), ("expected", -1)],
)  # fmt: skip
def test_malformed_part_checkpoints_are_refused(key: str, value: object) -> None:
    data = state_with_open_round().to_plain()
    data[key] = value
    with pytest.raises(SnapshotError):
        PartState.from_plain(data, LAYOUT, FedAvg())


def test_weights_that_do_not_fit_the_model_are_refused() -> None:
    data = state_with_open_round().to_plain()
    with pytest.raises(SnapshotError):
        PartState.from_plain(data, {"w": TensorSpec((3, 3))}, FedAvg())


def test_store_lists_parts_and_tracks_who_wrote_them(tmp_path: Path) -> None:
    mine, theirs = PartStore(tmp_path / "ns"), PartStore(tmp_path / "ns")
    assert mine.parts() == []
    assert mine.load("shared") is None
    assert not mine.changed("shared")
    mine.save("shared", {"n": 1})
    mine.save("expert-10", {"n": 1})
    (tmp_path / "ns" / ".shared.ckpt.tmp123").write_bytes(b"")  # a save killed half-way
    (tmp_path / "ns" / "notes.txt").write_text("x")
    assert mine.parts() == ["expert-10", "shared"]
    assert not mine.changed("shared")
    assert theirs.load("shared") == {"n": 1}
    theirs.save("shared", {"n": 2})
    assert mine.changed("shared")
    with pytest.raises(CheckpointConflict):
        mine.save("shared", {"n": 3})
    assert mine.load("shared") == {"n": 2}  # reading again makes it ours to write
    mine.save("shared", {"n": 3})
    assert theirs.changed("shared")
    mine.forget("shared")
    assert mine.changed("shared")  # no longer tracked: not ours


def test_settings_build_each_rule_with_its_parameters() -> None:
    assert load_settings(AggregatorSettings, {}).aggregation_rule() == ClippedFedAvg()
    env = {"FEDMOE_AGGREGATOR_CLIP_MULTIPLIER": "3", "FEDMOE_AGGREGATOR_CLIP_WINDOW": "8"}
    want = ClippedFedAvg(multiplier=3.0, window=8)
    assert load_settings(AggregatorSettings, env).aggregation_rule() == want
    env = {"FEDMOE_AGGREGATOR_RULE": "fedavg"}
    assert load_settings(AggregatorSettings, env).aggregation_rule() == FedAvg(max_norm=None)
    env = {"FEDMOE_AGGREGATOR_RULE": "fedavg", "FEDMOE_AGGREGATOR_MAX_NORM": "2.5"}
    assert load_settings(AggregatorSettings, env).aggregation_rule() == FedAvg(max_norm=2.5)
    env = {"FEDMOE_AGGREGATOR_RULE": "median", "FEDMOE_AGGREGATOR_MAX_UPDATES": "9"}
    assert load_settings(AggregatorSettings, env).aggregation_rule() == CoordinateMedian(9)
    env = {"FEDMOE_AGGREGATOR_RULE": "trimmed-mean", "FEDMOE_AGGREGATOR_TRIM_RATIO": "0.25"}
    assert load_settings(AggregatorSettings, env).aggregation_rule() == TrimmedMean(0.25)
    settings = load_settings(AggregatorSettings, {"FEDMOE_AGGREGATOR_CHECKPOINT_DIR": "/x"})
    assert settings.part_dir("ns1") == Path("/x/ns1")


@pytest.mark.parametrize(
    "env",
    [
        {"FEDMOE_AGGREGATOR_RULE": "mean"},
        {"FEDMOE_AGGREGATOR_RULE": "trimmed-mean", "FEDMOE_AGGREGATOR_TRIM_RATIO": "0.5"},
        {"FEDMOE_AGGREGATOR_MAX_NORM": "-1"},
        {"FEDMOE_AGGREGATOR_CLIP_MULTIPLIER": "0"},
        {"FEDMOE_AGGREGATOR_CLIP_WINDOW": "0"},
        {"FEDMOE_AGGREGATOR_GRACE_S": "nan"},
        {"FEDMOE_AGGREGATOR_LEDGER_WINDOW": "0"},
        {"FEDMOE_AGGREGATOR_INSTANCE_ID": "a/b"},
        {"FEDMOE_AGGREGATOR_GROUP_ID": ""},
    ],
)
def test_bad_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        load_settings(AggregatorSettings, env)
