"""The model parts a device holds: the latest `PartVersion` of each part it received.

The gateway publishes every part version retained on `{root}/model/{part}`, so a device learns
the current version of what it subscribes to at once and every new version after (the gate
rows come apart, in the round marker).
A round (RoundClosed) or an assignment names the versions to use; they may arrive after it
(the gateway forwards `model` and `rounds` independently), so a device asks `readiness` and
waits until READY, bounded.
OUTDATED means a newer version already replaced a wanted one: that request cannot be served.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum

from moe.tensors import PartTensors
from schemas.messages import PartVersion


class Offer(StrEnum):
    """What `ModelStore.offer` did with a part version."""

    NEWER = "newer"  # stored: the part's first or a newer version
    REPEAT = "repeat"  # the version held already (e.g. a retained message on resubscribe)
    OLDER = "older"  # older than the one held: ignored


class Readiness(StrEnum):
    """Whether the store holds the wanted versions of some parts."""

    READY = "ready"
    WAITING = "waiting"  # some part missing or older than wanted: may still arrive
    OUTDATED = "outdated"  # some part is newer than wanted: never will be served


class ModelStore:
    """Latest version per part (one device's view of the global model)."""

    def __init__(self) -> None:
        self._parts: dict[str, PartVersion] = {}

    def offer(self, message: PartVersion) -> Offer:
        """Keep `message` when it is newer than the version held of its part."""
        held = self._parts.get(message.part)
        if held is not None and held.version > message.version:
            return Offer.OLDER
        if held is not None and held.version == message.version:
            return Offer.REPEAT
        self._parts[message.part] = message
        return Offer.NEWER

    def forget(self, parts: Iterable[str]) -> None:
        """Drop the versions held of `parts` (a large model's expert is megabytes: a device
        keeps only what it listens to; the retained version returns with the subscription)."""
        for part in parts:
            self._parts.pop(part, None)

    def versions(self) -> dict[str, int]:
        """The version held of each part."""
        return {part: m.version for part, m in self._parts.items()}

    def readiness(self, wanted: Mapping[str, int], parts: Iterable[str]) -> Readiness:
        """Whether every one of `parts` is held at its version in `wanted` (any version when
        `wanted` does not name it)."""
        waiting = False
        for part in parts:
            held = self._parts.get(part)
            want = wanted.get(part)
            if held is None or (want is not None and held.version < want):
                waiting = True
            elif want is not None and held.version > want:
                return Readiness.OUTDATED
        return Readiness.WAITING if waiting else Readiness.READY

    def take(self, parts: Iterable[str]) -> dict[str, PartTensors]:
        """The tensors of `parts` (read-only arrays as decoded; KeyError for a missing one)."""
        return {part: self._parts[part].tensors for part in parts}
