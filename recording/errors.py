"""Errors of recordings (all under `fedmoe.errors.FedMoEError`; none is retriable by itself).

RecordingError            a recording or trace file cannot be written or read
└── TruncatedRecording    no complete row group could be recovered from a cut file
"""

from __future__ import annotations

from fedmoe.errors import FedMoEError


class RecordingError(FedMoEError):
    """A recording (or a trace to import) cannot be written or read as asked."""


class TruncatedRecording(RecordingError):
    """A file without a readable footer and no complete row group before the cut."""
