"""Atomic checkpoint files: the state a service resumes from after a crash.

A checkpoint is plain data (maps with str keys, lists, str, int, float, bool, None, bytes) and
numpy arrays, written as msgpack (arrays as the wire's tensor ExtType) to a temporary file in
the same directory, fsynced, then renamed over the previous one: a reader sees the old or the
new checkpoint, never a torn one. The file is the service's own (never a device's bytes).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from schemas.tensor import TENSOR_EXT_CODE, pack_tensor, unpack_tensor
from services.errors import ServiceFailed


class CheckpointError(ServiceFailed):
    """A checkpoint cannot be written or read back (fatal: state would be lost)."""


def _default(obj: object) -> object:
    if isinstance(obj, np.ndarray):
        return pack_tensor(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple | frozenset | set):
        return list(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> object:
    if code != TENSOR_EXT_CODE:
        raise CheckpointError(f"unknown ext code {code} in checkpoint")
    return np.array(unpack_tensor(data))  # a writable copy: state is mutated after restore


class CheckpointStore:
    """One service instance's checkpoint file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def save(self, state: Mapping[str, Any]) -> int:
        """Write `state` atomically; returns the bytes written."""
        try:
            data = msgpack.packb(dict(state), default=_default, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise CheckpointError(f"{self.path}: state is not serialisable: {exc}") from exc
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename itself survives a power cut
            finally:
                os.close(dir_fd)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise CheckpointError(f"{self.path}: cannot write checkpoint: {exc}") from exc
        return len(data)

    def load(self) -> dict[str, Any] | None:
        """The last saved state, or None when there is none yet."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot read checkpoint: {exc}") from exc
        try:
            state = msgpack.unpackb(data, raw=False, ext_hook=_ext_hook, strict_map_key=False)
        except CheckpointError:
            raise
        except Exception as exc:  # msgpack raises several unrelated types on corrupt input
            raise CheckpointError(f"{self.path}: corrupt checkpoint: {exc}") from exc
        if not isinstance(state, dict):
            raise CheckpointError(f"{self.path}: checkpoint is not a map")
        return state
