"""A device's update: parts, weights, losses and base versions from the local training; ids
stable across resends; the ack bookkeeping that ends the resends."""

from __future__ import annotations

import numpy as np
import pytest

from clients.uploads import AckEffect, PendingUpdate, build_update, update_id
from clients.world import FleetWorld
from moe.parts import SHARED
from moe.training import LocalResult, train_local
from schemas import ModelUpdate, decode, encode
from tests.unit.clients.helpers import ack, assignment, scenario, versions


def _update(experts: tuple[int, ...] = (0, 2), device: int = 3) -> tuple[ModelUpdate, LocalResult]:
    sc = scenario()
    world = FleetWorld(sc, time_scale=1.0)
    wanted = versions(sc, 0) | {"expert-2": 4, SHARED: 7}
    task = assignment(device, 5, experts, wanted)
    result = world.train(device, task, sc.initial_parts())
    return build_update(result, task, train_seconds=1.5, timestamp=9.0), result


def test_training_is_train_local_with_the_scenario_seed_and_hyperparameters() -> None:
    sc = scenario()
    world = FleetWorld(sc, time_scale=1.0)
    parts = sc.initial_parts()
    task = assignment(4, 3, (1, 3), versions(sc))
    got = world.train(4, task, parts)
    data = sc.data.devices[4]
    want = train_local(
        sc.model, parts, data.x, data.y, [1, 3], seed=sc.train_seed(3, 4),
        epochs=sc.config.epochs, batch_size=sc.config.batch_size, lr=sc.config.lr,
    )  # fmt: skip
    assert got.parts.keys() == want.parts.keys()
    for part, tensors in want.parts.items():
        for name, array in tensors.items():
            np.testing.assert_array_equal(got.parts[part][name], array)
    assert (got.expert_samples, got.expert_loss, got.steps) == (
        want.expert_samples,
        want.expert_loss,
        want.steps,
    )


def test_update_parts_weights_losses_and_base_versions() -> None:
    update, result = _update()
    assert update.message_id == update_id("dev-00003", 5) == "up-dev-00003-r5"
    assert (update.device_id, update.round, update.num_samples) == (
        "dev-00003",
        5,
        result.num_samples,
    )
    assert [p.part for p in update.parts] == [SHARED, "expert-0", "expert-2"]
    shared, e0, e2 = update.parts
    assert (shared.base_version, e0.base_version, e2.base_version) == (7, 0, 4)
    assert shared.weight == result.num_samples
    assert shared.loss == pytest.approx(result.train_loss)
    for payload, expert in ((e0, 0), (e2, 2)):
        assert payload.weight == result.expert_samples[expert]
        assert payload.loss == pytest.approx(result.expert_loss.get(expert, 0.0))
        for name, array in result.parts[payload.part].items():
            np.testing.assert_array_equal(payload.tensors[name], array)
    assert update.train_seconds == 1.5
    # What goes on the wire decodes to the same update.
    again = decode(encode(update))
    assert isinstance(again, ModelUpdate)
    assert again.message_id == update.message_id


def test_the_same_round_gives_the_same_update_bytes() -> None:
    """A retrain of the same round (e.g. after a restart) is recognisably the same update."""
    first, _ = _update()
    second, _ = _update()
    assert encode(first) == encode(second)


def test_pending_update_ends_when_every_part_has_a_final_ack() -> None:
    update, _ = _update()
    pending = PendingUpdate(update, (encode(update),))
    uid = pending.update_id
    assert pending.parts == (SHARED, "expert-0", "expert-2")
    assert pending.record_send() is True  # the first send
    assert pending.record_send() is False  # a resend
    assert not pending.done
    assert pending.on_ack(ack(uid, SHARED, "applied")) is AckEffect.FINAL
    assert pending.on_ack(ack(uid, SHARED, "duplicate")) is AckEffect.REPEAT  # from the resend
    assert pending.on_ack(ack("up-other-r1", "expert-0")) is AckEffect.STRANGER
    assert pending.on_ack(ack(uid, "expert-1")) is AckEffect.STRANGER  # not one of its parts
    assert not pending.done
    assert pending.on_ack(ack(uid, "expert-0", "late")) is AckEffect.FINAL
    assert pending.on_ack(ack(uid, "expert-2", "rejected")) is AckEffect.FINAL
    assert pending.done
    assert pending.final_statuses() == {
        SHARED: "applied",
        "expert-0": "late",
        "expert-2": "rejected",
    }
