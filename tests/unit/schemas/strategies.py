"""Hypothesis strategies that build valid instances of every message type."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import schemas
from schemas.chunks import split
from schemas.limits import MAX_EXPERTS, MAX_ID_CHARS, MAX_REASON_CHARS, MAX_TENSOR_RANK
from schemas.messages import PENDING_OUTCOMES

DTYPES = ("float32", "float64", "float16", "int64", "int32", "uint8", "bool")

ids = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40
) | st.text(alphabet="abc", min_size=MAX_ID_CHARS, max_size=MAX_ID_CHARS)
device_ids = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
uints = st.integers(0, 2**63 - 1) | st.integers(0, 1000) | st.just(2**64 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
nonneg = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=0, exclude_min=True, allow_nan=False, allow_infinity=False)
unit = st.floats(min_value=0, max_value=1)
texts = st.text(max_size=MAX_REASON_CHARS)
part_ids = st.just("shared") | st.integers(0, MAX_EXPERTS - 1).map(lambda i: f"expert-{i}")
expert_ids = st.integers(0, MAX_EXPERTS - 1).map(lambda i: f"expert-{i}")
versions = st.dictionaries(part_ids, uints, max_size=5)
histograms = st.lists(nonneg, max_size=16).map(tuple)


def arrays(*, finite_only: bool) -> st.SearchStrategy[np.ndarray]:
    """Arrays of every allowed dtype, rank 0..4, small sides (including empty ones)."""

    def of(dtype_name: str) -> st.SearchStrategy[np.ndarray]:
        dtype = np.dtype(dtype_name)
        elements = None
        if dtype.kind == "f":
            width: Literal[16, 32, 64] = (
                16 if dtype.itemsize == 2 else 32 if dtype.itemsize == 4 else 64
            )
            elements = st.floats(
                width=width,
                allow_nan=not finite_only,
                allow_infinity=not finite_only,
            )
        return hnp.arrays(
            dtype,
            hnp.array_shapes(min_dims=0, max_dims=MAX_TENSOR_RANK, min_side=0, max_side=4),
            elements=elements,
        )

    return st.sampled_from(DTYPES).flatmap(of)


def tensor_maps(*, finite_only: bool) -> st.SearchStrategy[dict[str, np.ndarray]]:
    """1..4 named tensors."""
    names = st.text(min_size=1, max_size=MAX_ID_CHARS)
    return st.dictionaries(names, arrays(finite_only=finite_only), min_size=1, max_size=4)


gate_rows = st.builds(
    lambda w, b: {"gate.weight": w, "gate.bias": b},
    hnp.arrays(
        np.float32,
        st.integers(0, 8),
        elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
    ),
    hnp.arrays(np.float32, 1, elements=st.floats(width=32, allow_nan=False, allow_infinity=False)),
)
"""An expert's gate row (`schemas.messages.GATE_TENSORS`, finite)."""


def _round_closed() -> st.SearchStrategy[schemas.Message]:
    """A RoundClosed whose gate rows are of parts it gives a version of."""

    def of(model_versions: dict[str, int]) -> st.SearchStrategy[schemas.Message]:
        gates = st.dictionaries(
            st.sampled_from(sorted(model_versions) or ["x"]), gate_rows, max_size=3
        )
        return _message(
            schemas.RoundClosed,
            reason=texts,
            parts_closed=uints,
            model_versions=st.just(model_versions),
            gates=gates if model_versions else st.just({}),
        )

    return versions.flatmap(of)


payloads = st.builds(
    schemas.PartPayload,
    part=part_ids,
    base_version=uints,
    weight=nonneg,
    loss=nonneg,
    tensors=tensor_maps(finite_only=False),
)


def _message(cls: type[schemas.Message], **body: Any) -> st.SearchStrategy[schemas.Message]:
    return st.builds(
        cls,
        message_id=ids,
        device_id=device_ids,
        round=st.integers(0, 2**31 - 1),
        timestamp=nonneg,
        **body,
    )


@st.composite
def _expert_load(draw: st.DrawFn) -> schemas.Message:
    n = draw(st.integers(1, 8))

    def column(elements: st.SearchStrategy[Any]) -> tuple[Any, ...]:
        return tuple(draw(st.lists(elements, min_size=n, max_size=n)))

    message: schemas.Message = draw(
        _message(
            schemas.ExpertLoad,
            assigned_clients=st.just(column(uints)),
            accepted_updates=st.just(column(uints)),
            samples_routed=st.just(column(nonneg)),
            rounds_since_update=st.just(column(uints)),
            cv=nonneg,
            max_mean=nonneg,
            clients_ewma=st.just(column(nonneg)),
            rounds_closed=uints,
        )
    )
    return message


@st.composite
def _dead_letter(draw: st.DrawFn) -> schemas.Message:
    original = draw(st.binary(max_size=256))
    message: schemas.Message = draw(
        _message(
            schemas.DeadLetter,
            source=st.text(max_size=64),
            reason=st.text(max_size=4 * MAX_REASON_CHARS),
            error=st.sampled_from(["MalformedError", "OversizeError", ""]),
            original=st.just(original),
            original_size=st.integers(len(original), 2**40),
        )
    )
    return message


@st.composite
def _chunk(draw: st.DrawFn) -> schemas.Message:
    """One chunk of a random whole, cut by `schemas.chunks.split` at a random chunk size."""
    whole = draw(st.binary(min_size=1, max_size=512))
    size = draw(st.integers(1, len(whole)))
    whole_ids = _message(schemas.DeviceStatus, online=st.booleans(), reason=st.just(""))
    envelope = draw(whole_ids.filter(lambda m: len(m.message_id) <= MAX_ID_CHARS - 8))
    chunks = split(
        whole, envelope, key=draw(st.sampled_from(["", "shared", "expert-7"])), chunk_bytes=size
    )
    return draw(st.sampled_from(chunks))


STRATEGIES: dict[type[schemas.Message], st.SearchStrategy[schemas.Message]] = {
    schemas.Telemetry: _message(
        schemas.Telemetry,
        device_type=st.integers(0, 255),
        compute_ms_per_sample=positive,
        bandwidth_kbps=positive,
        memory_mb=positive,
        battery=unit,
        num_samples=uints,
        routing_histogram=histograms,
        gate_version=uints,
        expert_loss=st.dictionaries(part_ids, nonneg, max_size=4),
    ),
    schemas.DeviceStatus: _message(schemas.DeviceStatus, online=st.booleans(), reason=texts),
    schemas.Assignment: _message(
        schemas.Assignment,
        experts=st.lists(st.integers(0, MAX_EXPERTS - 1), unique=True, max_size=8).map(
            lambda xs: tuple(sorted(xs))
        ),
        deadline=nonneg,
        model_versions=versions,
    ),
    schemas.ModelUpdate: _message(
        schemas.ModelUpdate,
        num_samples=uints,
        train_seconds=nonneg,
        parts=st.lists(payloads, min_size=1, max_size=3, unique_by=lambda p: p.part).map(tuple),
    ),
    schemas.PartUpdate: _message(
        schemas.PartUpdate,
        update_id=ids,
        parts_total=st.integers(1, MAX_EXPERTS + 1),
        num_samples=uints,
        payload=payloads,
    ),
    schemas.PartVersion: _message(
        schemas.PartVersion,
        part=part_ids,
        version=uints,
        layout_version=uints,
        tensors=tensor_maps(finite_only=True),
        contributors=uints,
        samples=nonneg,
    ),
    schemas.UpdateAck: _message(
        schemas.UpdateAck,
        update_id=ids,
        part=part_ids,
        status=st.sampled_from(sorted(schemas.UPDATE_STATUSES)),
        reason=texts,
    ),
    schemas.ExpertLoad: _expert_load(),
    schemas.ProfileSnapshot: _message(
        schemas.ProfileSnapshot,
        device_type=st.integers(0, 255),
        compute_ms_per_sample=positive,
        bandwidth_kbps=positive,
        memory_mb=positive,
        capacity=st.integers(0, MAX_EXPERTS),
        battery=unit,
        online=st.booleans(),
        num_samples=uints,
        completion_rate=unit,
        rounds_assigned=uints,
        rounds_completed=uints,
        last_seen=nonneg,
        routing_histogram=histograms,
        expert_quality=st.dictionaries(expert_ids, finite, max_size=4),
        expert_trials=st.dictionaries(expert_ids, uints, max_size=4),
        last_round=st.integers(-1, 2**31 - 1),
        pending_round=st.integers(-1, 2**31 - 1),
        pending_outcome=st.sampled_from(sorted(PENDING_OUTCOMES)),
        telemetry_round=st.integers(-1, 2**31 - 1),
        handled_offsets=st.dictionaries(
            st.text(min_size=1, max_size=MAX_ID_CHARS), st.integers(0, 2**63 - 1), max_size=4
        ),
    ),
    schemas.RoundOpened: _message(
        schemas.RoundOpened,
        deadline=finite,
        strategy=st.sampled_from(["fitness", "random", "affinity", "round-robin"]),
        devices=uints,
        expected_parts=versions,
        model_versions=versions,
    ),
    schemas.PartClosed: _message(
        schemas.PartClosed,
        part=part_ids,
        version=uints,
        applied=uints,
        reason=st.sampled_from(["quorum", "deadline"]),
        gate=st.one_of(st.just({}), gate_rows),
    ),
    schemas.RoundClosed: _round_closed(),
    schemas.EvalMetrics: _message(
        schemas.EvalMetrics, accuracy=unit, loss=finite, model_versions=versions
    ),
    schemas.DeadLetter: _dead_letter(),
    schemas.MessageChunk: _chunk(),
}

messages = st.sampled_from(list(STRATEGIES)).flatmap(lambda cls: STRATEGIES[cls])
"""Any valid message."""
