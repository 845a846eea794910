"""Domain errors of the MoE core (under the project's one root, `FedMoEError`)."""

from __future__ import annotations

from fedmoe.errors import FedMoEError


class MoEError(FedMoEError):
    """Root of the domain core's errors."""


class InvalidArgumentError(MoEError, ValueError):
    """A domain object or function was given an invalid argument (a bad rule parameter, a
    negative version, an unknown name); a `ValueError` too."""


class InfeasibleAssignmentError(MoEError):
    """The assignment constraints (capacities, per-expert bounds) admit no solution."""


class UpdateRejected(MoEError):
    """Aggregation refused an update; `reason` is a short machine-friendly code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class LayoutError(MoEError):
    """Tensors do not match the model's part layout (names, shapes, dtypes)."""
