"""`PartStore`: one atomic checkpoint file per part in a directory every instance shares.

Each file is written by `services.checkpoint.CheckpointStore` (temp file, fsync, rename), so a
reader sees a whole old or a whole new state. The store also remembers the identity of each
file as this instance last read or wrote it (inode, mtime, size: every save renames a new
inode into place), which tells it when another instance has written a part since: `changed()`
before acting on a part held in memory, and `save()` refuses to overwrite such a file (two
owners at once: the caller must stop rather than lose either's work). That check is a guard,
not a lock; ownership itself comes from the Kafka group (see the package docs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from schemas.messages import valid_part_id
from services.checkpoint import CheckpointError, CheckpointStore

_SUFFIX = ".ckpt"

FileIdentity = tuple[int, int, int]  # (inode, mtime ns, size)


class CheckpointConflict(CheckpointError):
    """A part's file was written by another instance since this one last read or wrote it."""


class PartStore:
    """Per-part checkpoint files under `directory` (created on the first save).

    Args:
        directory: the deployment's part directory (shared by its aggregator instances).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        # part -> identity of its file when last read or written here (None: there was none).
        self._known: dict[str, FileIdentity | None] = {}

    def path(self, part: str) -> Path:
        """The checkpoint file of `part`."""
        return self.directory / f"{part}{_SUFFIX}"

    def parts(self) -> list[str]:
        """Part ids that have a checkpoint file, sorted."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CheckpointError(f"{self.directory}: cannot list checkpoints: {exc}") from exc
        found = (n[: -len(_SUFFIX)] for n in names if n.endswith(_SUFFIX))
        return sorted(p for p in found if valid_part_id(p))

    def load(self, part: str) -> dict[str, Any] | None:
        """The part's last saved state (None when it has none); remembers the file's identity.

        Raises:
            CheckpointError: when the file cannot be read or is corrupt.
        """
        path = self.path(part)
        for _ in range(3):  # a save landing between the stat and the read: read again
            before = _identity(path)
            state = CheckpointStore(path).load()
            if _identity(path) == before:
                self._known[part] = before
                return state
        raise CheckpointError(f"{path}: keeps changing while being read")

    def save(self, part: str, state: dict[str, Any]) -> int:
        """Write the part's state atomically; returns the bytes written.

        Raises:
            CheckpointConflict: the file changed since this instance last read or wrote it.
            CheckpointError: when it cannot be written.
        """
        path = self.path(part)
        if self.changed(part):
            raise CheckpointConflict(
                f"{path}: written by another aggregator instance since this one read it"
            )
        size = CheckpointStore(path).save(state)
        self._known[part] = _identity(path)
        return size

    def changed(self, part: str) -> bool:
        """True when the part's file is not the one this instance last read or wrote."""
        return _identity(self.path(part)) != self._known.get(part)

    def forget(self, part: str) -> None:
        """Stop tracking a part this instance no longer holds."""
        self._known.pop(part, None)


def _identity(path: Path) -> FileIdentity | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot stat checkpoint: {exc}") from exc
    return (st.st_ino, st.st_mtime_ns, st.st_size)
