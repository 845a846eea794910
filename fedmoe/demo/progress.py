"""`RunProgress`: what a bus run did, folded from the records it left on Kafka (pure).

The demo's observer feeds it every record of the `rounds`, `metrics`, `acks` and `dead-letter`
topics; the progress line and the run's summary come from here. Folding is idempotent per
record identity (redelivered records, republished results after a restart count once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moe.load import imbalance
from moe.parts import expert_index
from schemas.messages import (
    DeadLetter,
    EvalMetrics,
    Message,
    PartClosed,
    RoundClosed,
    RoundOpened,
    UpdateAck,
)


@dataclass
class RunProgress:
    """The run so far, by round."""

    accuracy: dict[int, float] = field(default_factory=dict)  # round -> evaluator's accuracy
    load_cv: dict[int, float] = field(default_factory=dict)  # round -> CV of clients/expert
    devices: dict[int, int] = field(default_factory=dict)  # round -> devices assigned
    closed: set[int] = field(default_factory=set)  # rounds closed (RoundClosed seen)
    applied: dict[tuple[int, str], int] = field(default_factory=dict)  # (round, part) -> n
    ack_status: dict[tuple[str, str], str] = field(default_factory=dict)  # (update, part)
    duplicate_acks: int = 0
    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    counted: set[str] = field(default_factory=set)  # ids of acks and dead letters counted

    def fold(self, message: Message) -> None:
        """Take one record's message into account."""
        if isinstance(message, UpdateAck | DeadLetter):
            # A service re-produces the same message (same id) when it redoes work after a
            # restart: count each once.
            if message.message_id in self.counted:
                return
            self.counted.add(message.message_id)
        if isinstance(message, EvalMetrics):
            self.accuracy[message.round] = message.accuracy
        elif isinstance(message, RoundOpened):
            experts = sorted(
                (i, n)
                for part, n in message.expected_parts.items()
                if (i := expert_index(part)) is not None
            )
            self.load_cv[message.round] = imbalance([n for _, n in experts])[0]
            self.devices[message.round] = message.devices
        elif isinstance(message, PartClosed):
            # A part republished after an aggregator restart carries the same count.
            self.applied[(message.round, message.part)] = message.applied
        elif isinstance(message, RoundClosed):
            self.closed.add(message.round)
        elif isinstance(message, UpdateAck):
            key = (message.update_id, message.part)
            if message.status == "duplicate":
                self.duplicate_acks += 1
            # "applied" is final: a later duplicate verdict of the same part does not undo it.
            if self.ack_status.get(key) != "applied":
                self.ack_status[key] = message.status
        elif isinstance(message, DeadLetter):
            self.dead_letters += 1
            self.dead_letter_reasons[message.reason] = (
                self.dead_letter_reasons.get(message.reason, 0) + 1
            )

    @property
    def rounds_completed(self) -> int:
        """Training rounds closed (round 0, the genesis, is not one)."""
        return len([r for r in self.closed if r > 0])

    @property
    def updates_applied(self) -> int:
        """Part updates the aggregators applied, over every closed part."""
        return sum(self.applied.values())

    def acks_with(self, status: str) -> int:
        """Distinct (update, part) pairs whose final verdict is `status`."""
        return sum(1 for s in self.ack_status.values() if s == status)

    def line(self, rounds: int) -> str:
        """One progress line for the terminal."""
        done = self.rounds_completed
        last = max((r for r in self.accuracy if r > 0), default=None)
        acc = f"{self.accuracy[last]:.3f}" if last is not None else "  -  "
        cv_round = max(self.load_cv, default=None)
        cv = f"{self.load_cv[cv_round]:.3f}" if cv_round is not None else "  -  "
        return (
            f"round {done:>3}/{rounds}  accuracy {acc}  load CV {cv}  "
            f"updates acked {self.acks_with('applied'):>5}  late {self.acks_with('late'):>4}  "
            f"dead letters {self.dead_letters}"
        )

    def summary(self, rounds: int) -> dict[str, Any]:
        """The run's figures (the bus side of `summary.json`)."""
        trained = sorted(r for r in self.closed if r > 0)[:rounds]
        accuracy = [self.accuracy.get(r) for r in trained]  # None: not evaluated (yet)
        evaluated = [a for a in accuracy if a is not None]
        return {
            "rounds_completed": self.rounds_completed,
            "initial_accuracy": self.accuracy.get(0),
            "accuracy_per_round": accuracy,
            "final_accuracy": evaluated[-1] if evaluated else None,
            "load_cv_per_round": [self.load_cv.get(r) for r in trained],
            "devices_per_round": [self.devices.get(r, 0) for r in trained],
            "updates_applied": self.updates_applied,
            "updates_acked_on_kafka": self.acks_with("applied"),
            "late_updates": self.acks_with("late"),
            "rejected_updates": self.acks_with("rejected"),
            "duplicates_dropped": self.duplicate_acks,
            "dead_letters": self.dead_letters,
            "dead_letter_reasons": dict(self.dead_letter_reasons),
        }
