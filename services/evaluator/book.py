"""The evaluator's state: part versions held, rounds to score, rounds scored (pure).

`PartVersion` (topic `model`) and `RoundClosed` (topic `rounds`) travel on different topics, so
either may come first; a round is scored once the book holds *exactly* the versions its
`RoundClosed` names, and only once: `EvalMetrics` already on `metrics` (read back at start)
mark rounds done.

Memory: per part the latest `history` versions are kept, plus any version a waiting round
names. A waiting round that names a version the book will never hold (it holds a newer one of
that part but not that one: versions of a part arrive in order on its partition) can never be
scored exactly; it is dropped and reported by `take_ready`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from moe.errors import LayoutError
from moe.parts import SUPPORTED_LAYOUT_VERSIONS, check_part
from moe.tensors import PartLayout, PartTensors
from schemas.messages import EvalMetrics, PartVersion, RoundClosed
from services.errors import InvalidPayload


@dataclass(frozen=True, slots=True)
class ReadyRound:
    """A round whose model the book holds: score `parts` and publish for `closed`."""

    closed: RoundClosed
    parts: Mapping[str, PartTensors]


@dataclass(slots=True)
class Taken:
    """What `take_ready` hands out: rounds to score now, rounds that never can be."""

    ready: list[ReadyRound] = field(default_factory=list)
    dropped: list[tuple[int, str]] = field(default_factory=list)  # (round, why)


class EvaluationBook:
    """Part versions held, rounds waiting, rounds done."""

    def __init__(self, layout: Mapping[str, PartLayout], history: int = 4) -> None:
        if history < 1:
            raise ValueError("history must be >= 1")
        self._layout = dict(layout)
        self._history = history
        self._versions: dict[str, dict[int, PartTensors]] = {p: {} for p in self._layout}
        self._waiting: dict[int, RoundClosed] = {}
        self._done: set[int] = set()

    @property
    def waiting(self) -> list[int]:
        """Rounds closed but not scored yet, ascending."""
        return sorted(self._waiting)

    @property
    def done(self) -> frozenset[int]:
        """Rounds scored (here or by an earlier run)."""
        return frozenset(self._done)

    def held(self, part: str) -> list[int]:
        """Versions of `part` held, ascending."""
        return sorted(self._versions.get(part, {}))

    # -- inputs ------------------------------------------------------------------------------

    def on_part_version(self, message: PartVersion) -> None:
        """Hold one part version. Raises `InvalidPayload` for a part the model does not have."""
        if message.layout_version not in SUPPORTED_LAYOUT_VERSIONS:
            raise InvalidPayload("unsupported-layout", f"layout_version {message.layout_version}")
        try:
            check_part(message.part, message.tensors, self._layout, require_finite=True)
        except LayoutError as exc:
            raise InvalidPayload("bad-part", str(exc)) from exc
        self._versions[message.part][message.version] = dict(message.tensors)
        self._prune(message.part)

    def on_round_closed(self, message: RoundClosed) -> None:
        """Note a round to score. Raises `InvalidPayload` unless it names every part."""
        names = set(message.model_versions)
        if names != set(self._layout):
            missing = sorted(set(self._layout) - names)
            unknown = sorted(names - set(self._layout))
            raise InvalidPayload("bad-versions", f"missing {missing[:4]}, unknown {unknown[:4]}")
        if message.round not in self._done:
            self._waiting[message.round] = message

    def on_metrics(self, message: EvalMetrics) -> None:
        """A round already scored (its EvalMetrics is on the topic)."""
        self._done.add(message.round)
        self._waiting.pop(message.round, None)
        for part in self._versions:
            self._prune(part)

    # -- output ------------------------------------------------------------------------------

    def take_ready(self) -> Taken:
        """Rounds now scorable (ascending; marked done) and rounds that never will be."""
        taken = Taken()
        for r in sorted(self._waiting):
            closed = self._waiting[r]
            parts: dict[str, PartTensors] = {}
            never = ""
            for part, version in closed.model_versions.items():
                held = self._versions[part]
                if version in held:
                    parts[part] = held[version]
                elif held and max(held) > version:
                    never = f"{part} v{version} passed (holds v{max(held)})"
            if never:
                del self._waiting[r]
                taken.dropped.append((r, never))
            elif len(parts) == len(self._layout):
                del self._waiting[r]
                self._done.add(r)
                taken.ready.append(ReadyRound(closed, parts))
        if taken.ready or taken.dropped:
            for part in self._versions:
                self._prune(part)
        return taken

    def _prune(self, part: str) -> None:
        held = self._versions[part]
        if len(held) <= self._history:
            return
        needed = {c.model_versions[part] for c in self._waiting.values()}
        keep = set(sorted(held)[-self._history :]) | needed
        for version in [v for v in held if v not in keep]:
            del held[version]
