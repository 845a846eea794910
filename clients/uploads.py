"""A device's upload, pure: the `ModelUpdate` of one round and its end-to-end ack bookkeeping.

One update per (device, round): parts `shared` (weight = the device's sample count, loss = its
mean local loss) and `expert-e` for each assigned e (weight = samples routed to e after
training, loss = their mean loss, 0 when none were routed), every part based on the version the
assignment named. Its id, `up-{device}-r{round}`, is the envelope message id and the update id
the aggregator acks; it depends only on (device, round), so a resend — or a retrain of the same
round after a restart, which gives the same weights (seeded) — is recognised as the same update.

`PendingUpdate` keeps the update until every part got a final `UpdateAck` (applied, duplicate,
late or rejected, all final: a resend cannot change them); until then it is resent, with the
same bytes, every `resend_s`, at most `max_resends` times.

An update too large for one message (a large model's experts: `update_payloads`) goes as the
`PartUpdate`s the gateway would have made of it, each cut into chunks (`schemas.chunks`); the
gateway forwards every chunk keyed by its part and the aggregator reassembles each part whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from moe.training import LocalResult
from moe.wire import model_update, update_id
from schemas.chunks import encode_records
from schemas.codec import encode
from schemas.limits import MAX_ASSEMBLED_BYTES, MAX_MESSAGE_BYTES
from schemas.messages import Assignment, ModelUpdate, UpdateAck, split_update

__all__ = ["AckEffect", "PendingUpdate", "build_update", "update_id", "update_payloads"]


def build_update(
    result: LocalResult, assignment: Assignment, *, train_seconds: float, timestamp: float
) -> ModelUpdate:
    """The upload of one local training result for `assignment` (see the module docstring)."""
    return model_update(
        result,
        device_id=assignment.device_id,
        round=assignment.round,
        experts=assignment.experts,
        base_versions=assignment.model_versions,
        train_seconds=train_seconds,
        timestamp=timestamp,
    )


def update_payloads(update: ModelUpdate, max_bytes: int = MAX_MESSAGE_BYTES) -> tuple[bytes, ...]:
    """The MQTT payloads of `update`: its encoding when it fits in `max_bytes`, else the chunks
    of each of its `PartUpdate`s (every part chunked, a small one as one chunk, so the gateway
    sees one kind of message per update). Raises `SchemaError` for a part over
    `MAX_ASSEMBLED_BYTES`."""
    data = encode(update, max_bytes=MAX_ASSEMBLED_BYTES)
    if len(data) <= max_bytes:
        return (data,)
    payloads: list[bytes] = []
    for part in split_update(update):  # max_bytes 0: chunked, however small
        payloads += encode_records(part, key=part.payload.part, max_bytes=0)
    return tuple(payloads)


class AckEffect(StrEnum):
    """What one `UpdateAck` did to a pending update."""

    FINAL = "final"  # the first final status of one of its parts
    REPEAT = "repeat"  # a part that already had its final status (e.g. a resend's duplicate)
    STRANGER = "stranger"  # not a part of this update


@dataclass
class PendingUpdate:
    """One update kept until every part is acknowledged (see the module docstring)."""

    update: ModelUpdate
    payloads: tuple[bytes, ...]  # `update_payloads(update)`, sent in order on every (re)send
    sends: int = 0
    statuses: dict[str, str] = field(default_factory=dict)

    @property
    def update_id(self) -> str:
        """The update's id (its envelope message id)."""
        return self.update.message_id

    @property
    def parts(self) -> tuple[str, ...]:
        """Every part of the update."""
        return tuple(p.part for p in self.update.parts)

    @property
    def done(self) -> bool:
        """Every part has its final status."""
        return all(p in self.statuses for p in self.parts)

    def record_send(self) -> bool:
        """Count one send; True when it is the first (later ones are resends)."""
        self.sends += 1
        return self.sends == 1

    def may_resend(self, max_resends: int) -> bool:
        """Whether another resend is allowed (not done, resends left)."""
        return not self.done and self.sends - 1 < max_resends

    def on_ack(self, ack: UpdateAck) -> AckEffect:
        """Take one ack of this device (any update id) into account."""
        if ack.update_id != self.update_id or ack.part not in self.parts:
            return AckEffect.STRANGER
        if ack.part in self.statuses:
            return AckEffect.REPEAT
        self.statuses[ack.part] = ack.status
        return AckEffect.FINAL

    def final_statuses(self) -> Mapping[str, str]:
        """Part → final status, for the parts acknowledged so far."""
        return dict(self.statuses)
