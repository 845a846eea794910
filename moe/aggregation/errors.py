"""Errors of the aggregation package that are the caller's fault, not a device's.

A device's bad update is `moe.errors.UpdateRejected` (turned into a verdict); these are raised
when the service or simulation drives an aggregator wrongly or hands it a broken checkpoint.
"""

from __future__ import annotations

from moe.errors import MoEError


class RoundStateError(MoEError):
    """A round operation that the aggregator's round state does not allow (e.g. close twice)."""


class SnapshotError(MoEError):
    """A checkpoint's plain data is malformed or does not fit this aggregator (rule, layout)."""
