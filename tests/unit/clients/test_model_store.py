"""The device's model store: newest version per part, and whether wanted versions are held."""

from __future__ import annotations

import numpy as np

from clients.model_store import ModelStore, Offer, Readiness
from tests.unit.clients.helpers import part_version

T = {"w": np.zeros(2, dtype=np.float32)}


def test_offer_keeps_the_newest_version_of_each_part() -> None:
    store = ModelStore()
    assert store.offer(part_version("shared", 1, T)) is Offer.NEWER
    assert store.offer(part_version("shared", 1, T)) is Offer.REPEAT  # a retained redelivery
    assert store.offer(part_version("shared", 0, T)) is Offer.OLDER
    assert store.offer(part_version("shared", 3, T)) is Offer.NEWER
    assert store.offer(part_version("expert-0", 0, T)) is Offer.NEWER
    assert store.versions() == {"shared": 3, "expert-0": 0}


def test_readiness_waits_for_missing_or_older_parts_and_gives_up_on_replaced_ones() -> None:
    store = ModelStore()
    parts = ["shared", "expert-1"]
    wanted = {"shared": 2, "expert-1": 1, "expert-3": 7}  # expert-3 is not asked for
    assert store.readiness(wanted, parts) is Readiness.WAITING  # nothing yet
    store.offer(part_version("shared", 2, T))
    store.offer(part_version("expert-1", 0, T))
    assert store.readiness(wanted, parts) is Readiness.WAITING  # expert-1 still old
    store.offer(part_version("expert-1", 1, T))
    assert store.readiness(wanted, parts) is Readiness.READY
    assert set(store.take(parts)) == set(parts)
    store.offer(part_version("shared", 3, T))
    assert store.readiness(wanted, parts) is Readiness.OUTDATED  # shared v2 is gone for good
    # A part the request does not version: any held version will do.
    assert store.readiness({}, ["shared"]) is Readiness.READY
    assert store.readiness({}, ["expert-2"]) is Readiness.WAITING


def test_take_returns_the_held_tensors() -> None:
    store = ModelStore()
    tensors = {"w": np.arange(3, dtype=np.float32)}
    store.offer(part_version("expert-2", 5, tensors))
    np.testing.assert_array_equal(store.take(["expert-2"])["expert-2"]["w"], tensors["w"])
