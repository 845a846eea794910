"""The aggregator's outputs (pure): acks, part versions and part closes, with deterministic ids.

Outputs are produced before the checkpoint that covers them (the runtime's order), so a crash in
between replays the same inputs against the previous checkpoint and produces the same outputs
again. Their message ids depend only on what they say, so a replayed output carries the id of
the original and consumers can drop it (at-least-once on the wire, once by id).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from numpy.typing import NDArray

from moe.aggregation import Verdict
from schemas.messages import PartClosed, PartUpdate, PartVersion, UpdateAck, gate_row
from schemas.topics import Topic
from services.handler import Outbound

SENDER = "aggregator"  # device_id of the aggregator's own messages


def ack_id(update: PartUpdate, status: str) -> str:
    """The message id of the ack with `status` for `update` (the same on every replay)."""
    text = "\0".join(
        (update.update_id, update.payload.part, update.device_id, str(update.round), status)
    )
    return "ack-" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def update_ack(update: PartUpdate, verdict: Verdict, now: float) -> Outbound:
    """The `UpdateAck` of one verdict, to the update's device (key = device id)."""
    ack = UpdateAck(
        message_id=ack_id(update, verdict.status),
        device_id=update.device_id,
        round=update.round,
        timestamp=now,
        update_id=update.update_id,
        part=update.payload.part,
        status=verdict.status,
        reason=verdict.reason,
    )
    return Outbound(Topic.ACKS, update.device_id, ack)


def part_version(
    *,
    part: str,
    version: int,
    round_: int,
    tensors: Mapping[str, NDArray[Any]],
    layout_version: int,
    contributors: int,
    samples: float,
    now: float,
) -> Outbound:
    """`PartVersion` of `part` after `round_` (or at its creation), key = part id."""
    message = PartVersion(
        message_id=f"{part}/v{version}/r{round_}",
        device_id=SENDER,
        round=round_,
        timestamp=now,
        part=part,
        version=version,
        layout_version=layout_version,
        tensors=dict(tensors),
        contributors=contributors,
        samples=samples,
    )
    return Outbound(Topic.MODEL, part, message)


def part_closed(
    *,
    part: str,
    round_: int,
    version: int,
    applied: int,
    reason: str,
    tensors: Mapping[str, NDArray[Any]],
    now: float,
) -> Outbound:
    """`PartClosed` of `part` in `round_` (reason `quorum` or `deadline`), key "round", with
    the gate row of `tensors` (the part at `version`)."""
    message = PartClosed(
        message_id=f"closed/{part}/r{round_}",
        device_id=SENDER,
        round=round_,
        timestamp=now,
        part=part,
        version=version,
        applied=applied,
        reason=reason,
        gate=gate_row(tensors),
    )
    return Outbound(Topic.ROUNDS, "round", message)
