"""Property tests: every valid message of every type survives encode → decode unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from schemas.codec import decode, encode
from schemas.limits import MAX_MESSAGE_BYTES
from schemas.messages import RoundOpened
from tests.unit.schemas.helpers import same
from tests.unit.schemas.strategies import STRATEGIES, arrays

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_every_message_type_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(schemas.MESSAGE_TYPES)


@pytest.mark.parametrize("cls", schemas.MESSAGE_TYPES, ids=lambda c: c.__name__)
@SETTINGS
@given(data=st.data())
def test_round_trip(cls: type[schemas.Message], data: st.DataObject) -> None:
    message = data.draw(STRATEGIES[cls])
    encoded = schemas.encode(message)
    assert len(encoded) <= MAX_MESSAGE_BYTES
    back = schemas.decode(encoded)
    assert type(back) is cls
    assert same(back, message)
    assert same(schemas.decode_as(encoded, cls), message)
    # Canonical: re-encoding the decoded message gives the same bytes.
    assert schemas.encode(back) == encoded


@SETTINGS
@given(array=arrays(finite_only=False))
def test_tensor_round_trip(array: np.ndarray) -> None:
    back = schemas.unpack_tensor(schemas.pack_tensor(array).data)
    assert same(back, array)
    assert not back.flags.writeable


def test_the_round_marker_of_a_ten_thousand_device_round_round_trips() -> None:
    # The `shared` part's marker names every assigned device (the aggregator's weight caps).
    assigned = {f"dev-{i:05d}": 100 + i % 7 for i in range(20_000)}
    marker = RoundOpened(
        message_id="round-opened-3",
        device_id="matcher",
        round=3,
        timestamp=1.0,
        deadline=2.0,
        strategy="fitness",
        devices=len(assigned),
        expected_parts={"shared": len(assigned)},
        model_versions={"shared": 2},
        assigned=assigned,
    )
    assert decode(encode(marker)) == marker
