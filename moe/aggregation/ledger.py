"""The applied-update ledger: which (round, device, part) updates were already applied.

Delivery is at-least-once end to end (Kafka redelivery, device resends until acked), so the same
update reaches the aggregator more than once; the ledger makes applying it idempotent. It is
checkpointed atomically together with the weights it describes, so after a restart the two
agree.

Memory is bounded by a window of rounds: with `latest` the newest round recorded or advanced
to, only rounds `> latest − window` are remembered; keys of older rounds are *stale*. A stale
key can no longer be told apart from a new one, so callers must refuse it (the aggregator
answers `late`/`stale`), which is safe because a round that old is closed anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from moe.aggregation.errors import SnapshotError
from moe.errors import InvalidArgumentError, UpdateRejected

LedgerStatus = Literal["new", "duplicate", "stale"]

DEFAULT_WINDOW = 4
_FORMAT = 1


class UpdateKey(NamedTuple):
    """Identity of one part of one device's update in one round."""

    round: int
    device_id: str
    part: str


class UpdateLedger:
    """Applied-update keys of the most recent rounds.

    Args:
        window: how many most recent rounds are remembered (>= 1). Memory is
            O(window × updates per round).

    Raises:
        InvalidArgumentError: for a window < 1.
    """

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise InvalidArgumentError(f"ledger window must be an int >= 1, got {window!r}")
        self._window = window
        self._latest: int | None = None
        # round -> {(device_id, part)}; one set per remembered round, so forgetting is cheap.
        self._rounds: dict[int, set[tuple[str, str]]] = {}

    @property
    def window(self) -> int:
        """How many most recent rounds are remembered."""
        return self._window

    @property
    def latest_round(self) -> int | None:
        """The newest round recorded or advanced to; None while empty."""
        return self._latest

    def __len__(self) -> int:
        """Keys remembered."""
        return sum(len(keys) for keys in self._rounds.values())

    def check(self, key: UpdateKey) -> LedgerStatus:
        """Classify a key without changing anything.

        Args:
            key: the update's (round, device id, part).

        Returns:
            `duplicate` when recorded, `stale` when its round is older than the window,
            else `new`.
        """
        if self._latest is not None and key.round <= self._latest - self._window:
            return "stale"
        keys = self._rounds.get(key.round)
        return "duplicate" if keys is not None and (key.device_id, key.part) in keys else "new"

    def seen(self, key: UpdateKey) -> bool:
        """True when the key was recorded (and its round is still remembered)."""
        return self.check(key) == "duplicate"

    def record(self, key: UpdateKey) -> None:
        """Record a key as applied; a newer round moves the window forward.

        Only record rounds you have validated: a bogus far-future round would move the window
        past every real round.

        Args:
            key: the applied update's (round, device id, part).

        Raises:
            UpdateRejected: `duplicate` when already recorded, `stale` when its round is older
                than the window; the ledger is then unchanged.
        """
        status = self.check(key)
        if status != "new":
            raise UpdateRejected(status, f"{key.device_id}/{key.part} round {key.round}")
        self.advance(key.round)
        self._rounds.setdefault(key.round, set()).add((key.device_id, key.part))

    def advance(self, round: int) -> None:
        """Move the window so that `round` is the newest remembered; forgets what falls out.

        A round not newer than `latest_round` changes nothing.
        """
        if self._latest is not None and round <= self._latest:
            return
        self._latest = round
        horizon = round - self._window
        for old in [r for r in self._rounds if r <= horizon]:
            del self._rounds[old]

    def to_plain(self) -> dict[str, Any]:
        """JSON-able data, sorted so equal ledgers serialise identically."""
        keys = sorted(
            [r, device, part] for r, pairs in self._rounds.items() for device, part in pairs
        )
        return {"format": _FORMAT, "window": self._window, "latest": self._latest, "keys": keys}

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> UpdateLedger:
        """Rebuild a ledger from `to_plain` output (e.g. after a JSON round trip).

        Raises:
            SnapshotError: when the data is malformed.
        """
        if data.get("format") != _FORMAT:
            raise SnapshotError(f"ledger format {data.get('format')!r}")
        try:
            ledger = cls(data["window"])
        except (KeyError, InvalidArgumentError) as exc:
            raise SnapshotError(f"ledger window: {exc}") from None
        latest, keys = data.get("latest"), data.get("keys")
        if latest is not None and not _is_int(latest):
            raise SnapshotError(f"ledger latest {latest!r}")
        if not isinstance(keys, list):
            raise SnapshotError("ledger keys must be a list")
        if latest is not None:
            ledger.advance(latest)
        for item in keys:
            if not (
                isinstance(item, list | tuple)
                and len(item) == 3
                and _is_int(item[0])
                and isinstance(item[1], str)
                and isinstance(item[2], str)
            ):
                raise SnapshotError(f"ledger key {item!r}")
            if latest is None or not latest - ledger.window < item[0] <= latest:
                raise SnapshotError(f"ledger key {item!r} outside the window")
            ledger._rounds.setdefault(item[0], set()).add((item[1], item[2]))
        return ledger


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
