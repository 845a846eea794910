"""The soak's report: `report.json` (events, violations, invariants, counts, restarts, memory
slopes, lag peaks) and `report.png` (a timeline: accuracy, round duration, lag and memory per
service, every plan event drawn where it happened)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EventRecord:
    """One executed plan action."""

    t: float
    action: str
    target: str
    ok: bool
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "t": round(self.t, 1),
            "action": self.action,
            "target": self.target,
            "ok": self.ok,
        }
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass
class Timeline:
    """The series the figure draws (t: seconds since the start)."""

    accuracy: list[tuple[float, int, float]] = field(default_factory=list)  # (t, round, acc)
    round_seconds: list[tuple[float, int, float]] = field(default_factory=list)  # closed at
    lag: list[tuple[float, str, int]] = field(default_factory=list)  # (t, service, lag)
    rss: list[tuple[float, str, float]] = field(default_factory=list)  # (t, process, MB)
    online: list[tuple[float, int]] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)


def write_report(out: Path, report: Mapping[str, Any], timeline: Timeline, title: str) -> None:
    """`out/report.json`, `out/report.png` and the series behind the figure,
    `out/timeline.json` (to judge again or draw otherwise later)."""
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    series = {
        "accuracy": timeline.accuracy,
        "round_seconds": timeline.round_seconds,
        "lag": timeline.lag,
        "rss": timeline.rss,
        "online": timeline.online,
        "events": [e.as_dict() for e in timeline.events],
    }
    (out / "timeline.json").write_text(json.dumps(series) + "\n")
    plot_timeline(timeline, out / "report.png", title)


_COLORS = {
    "kill": "tab:red",
    "restart": "tab:purple",
    "pause": "tab:orange",
    "drop_devices": "tab:blue",
    "slow_devices": "tab:cyan",
    "join": "tab:green",
    "leave": "tab:brown",
}


def _by_key(points: Sequence[tuple[float, str, float]]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t, key, value in points:
        out[key].append((t, value))
    return dict(sorted(out.items()))


def plot_timeline(timeline: Timeline, path: Path, title: str) -> None:
    """Four panels sharing the time axis (minutes), plan events as vertical lines."""
    from matplotlib.figure import Figure  # the OO API: no pyplot state, no display

    fig = Figure(figsize=(11, 11))
    axes = fig.subplots(4, 1, sharex=True)
    acc, dur, lag, mem = axes
    if timeline.accuracy:
        points = sorted((t, a) for t, r, a in timeline.accuracy if r > 0)
        acc.plot([t / 60 for t, _ in points], [a for _, a in points], ".-", ms=3)
    acc.set_ylabel("test accuracy")
    if timeline.round_seconds:
        dur.plot(
            [t / 60 for t, _, _ in timeline.round_seconds],
            [s for _, _, s in timeline.round_seconds],
            ".",
            ms=3,
        )
    dur.set_ylabel("round open → closed (s)")
    for service, points in _by_key([(t, s, float(v)) for t, s, v in timeline.lag]).items():
        lag.plot([t / 60 for t, _ in points], [v for _, v in points], lw=0.8, label=service)
    lag.set_ylabel("consumer lag (records)")
    for process, points in _by_key(timeline.rss).items():
        mem.plot([t / 60 for t, _ in points], [v for _, v in points], lw=0.8, label=process)
    mem.set_ylabel("RSS (MB)")
    mem.set_xlabel("minutes since start")
    for ax in axes:
        ax.grid(alpha=0.3)
        for event in timeline.events:
            ax.axvline(
                event.t / 60,
                color=_COLORS.get(event.action, "gray"),
                lw=0.7,
                alpha=0.6,
                ls="-" if event.ok else ":",
            )
    for ax in (lag, mem):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=4, loc="upper left")
    handles = [
        acc.plot([], [], color=color, lw=1.5, label=action)[0] for action, color in _COLORS.items()
    ]
    acc.legend(handles=handles, fontsize=7, ncol=7, loc="lower right", title="plan events")
    acc.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
