"""`unordered_map`: independent simulation jobs over worker processes, results as they finish."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

J = TypeVar("J")
R = TypeVar("R")


def unordered_map(fn: Callable[[J], R], jobs: Sequence[J], workers: int) -> Iterator[R]:
    """`fn(job)` for every job, yielding each result as it finishes (any order); in this
    process when there is one worker or one job."""
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            yield fn(job)
        return
    # spawn: workers start clean (no inherited threads or BLAS state), whatever the caller holds.
    with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap_unordered(fn, jobs)
