"""Benchmark of per-part streaming aggregation beside numpy's in-place ceiling.

    python -m benchmarks.aggregation [--quick] [--updates N] [--repeats N] [--rules A,B]

For each part size (64 KB to 256 MB of float32 weights) it times, on one core:

- `fold`: what the aggregator does per update, end to end: decode the `PartUpdate` record
  (the codec, zero-copy tensors), validate it against the part's layout (structure, dtype,
  finiteness) and fold it into the rule's streaming accumulator; GB/s of update bytes. Under
  `clipped-fedavg` it also measures each delta's norm before the fold (`PartAccumulator.check`,
  the aggregator's outlier rule) and clips at the median norm (about half the updates), as
  the rule does once the part has a history;
- `ceiling`: numpy's in-place `a += w * b` over the same arrays (`np.multiply(b, w, out=tmp)`,
  `np.add(a, tmp, out=a)`: two passes, no allocation), the memory-bandwidth bound of any
  weighted fold written in numpy.

A part larger than one message (`schemas.limits.MAX_MESSAGE_BYTES`) travels as the chunks of
its `PartUpdate` (`schemas.chunks`); for it the `fold` row also does what the aggregator's
runtime does with them: spool every chunk (`Reassembler`), read the whole back, check its
SHA-256 and decode it (`"path": "chunks"`, one record otherwise: `"path": "message"`).

Each line also reports the fold's peak extra memory (`accumulator_mb`: the rule's state, the
O(part) bound) and the process's peak RSS. Prints one JSON line per (size, figure):
`{"benchmark", "figure", "unit", "value", "ceiling", "ratio", ...params}`.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from benchmarks.cpu import host
from moe.aggregation.base import AggregationRule, PartAccumulator
from moe.aggregation.clipping import ClippedFedAvg
from moe.aggregation.registry import make_rule
from moe.aggregation.validation import check_weight
from schemas.chunks import Reassembler, encode_records
from schemas.codec import decode, decode_as
from schemas.limits import MAX_TENSOR_ELEMENTS, MAX_TENSORS_PER_PART
from schemas.messages import MessageChunk, PartPayload, PartUpdate

KB = 1024
MB = 1024 * KB
FULL_SIZES: tuple[int, ...] = (64 * KB, 1 * MB, 4 * MB, 16 * MB, 64 * MB, 256 * MB)
QUICK_SIZES: tuple[int, ...] = (64 * KB, 1 * MB, 4 * MB)
_TENSOR_ELEMENTS = 2**20  # 4 MiB float32 tensors, as many as a part may hold, then larger

Tensors = dict[str, NDArray[np.float32]]


def part_tensors(nbytes: int, rng: np.random.Generator) -> Tensors:
    """float32 tensors totalling `nbytes`: of 4 MiB each, or of a 32nd of the part (the most
    tensors a part may hold) when that is more."""
    elements = nbytes // 4
    per_tensor = min(
        MAX_TENSOR_ELEMENTS, max(_TENSOR_ELEMENTS, -(-elements // MAX_TENSORS_PER_PART))
    )
    out: Tensors = {}
    index = 0
    while elements > 0:
        n = min(elements, per_tensor)
        out[f"w{index}"] = rng.standard_normal(n, dtype=np.float32)
        elements -= n
        index += 1
    return out


def encode_update(tensors: Tensors, index: int) -> list[bytes]:
    """The records of one `PartUpdate` as they reach Kafka: one, or its chunks."""
    return encode_records(
        PartUpdate(
            message_id=f"u{index}/expert-0",
            device_id=f"dev-{index}",
            round=1,
            timestamp=0.0,
            update_id=f"u{index}",
            parts_total=1,
            num_samples=100 + index,
            payload=PartPayload(
                part="expert-0",
                base_version=0,
                weight=float(100 + index),
                loss=0.5,
                tensors=tensors,
            ),
        ),
        key="expert-0",
    )


def _best(fn: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _start(rule: AggregationRule, base: Tensors, bound: float | None) -> PartAccumulator:
    if isinstance(rule, ClippedFedAvg):
        return rule.start_clipped(base, bound)
    return rule.start(base)


def measure(
    nbytes: int, updates: int, repeats: int, rule_name: str, seed: int
) -> list[dict[str, Any]]:
    """The `fold` and `ceiling` lines of one part size."""
    rng = np.random.default_rng(seed)
    base = part_tensors(nbytes, rng)
    rule = make_rule(rule_name)
    # Updates on the wire: one record each, or the chunks of each.
    sources: list[Tensors] = [
        {name: (array + rng.standard_normal(1, dtype=np.float32)) for name, array in base.items()}
        for _ in range(updates)
    ]
    clipping = isinstance(rule, ClippedFedAvg)
    bound = None
    if clipping:
        norms = sorted(rule.start(base).check("probe", t).norm for t in sources)
        bound = norms[len(norms) // 2]
    records = [encode_update(t, i) for i, t in enumerate(sources)]
    del sources
    chunked = len(records[0]) > 1

    def update(i: int, chunks: Reassembler) -> PartUpdate:
        if not chunked:
            return decode_as(records[i][0], PartUpdate)
        for data in records[i]:
            chunk = decode(data)
            assert isinstance(chunk, MessageChunk)
            assembled = chunks.add(chunk, 0.0)
        assert assembled is not None
        message = assembled.message
        assert isinstance(message, PartUpdate)
        return message

    state: dict[str, Any] = {}

    def fold() -> None:
        acc = _start(rule, base, bound)
        chunks = Reassembler()
        for i in range(updates):
            msg = update(i, chunks)
            w = check_weight(msg.payload.weight)
            tensors = msg.payload.tensors
            del msg
            # As the aggregator: a rule that keeps a norm history measures first, then folds.
            acc.add(f"u{i}", acc.check(f"u{i}", tensors) if clipping else tensors, w)
            del tensors
        state["result"] = acc.result()
        state["acc_mb"] = acc.nbytes / MB

    # The ceiling folds the same decoded arrays, so both sides read the same bytes.
    scratch = Reassembler()
    arrays = [update(i, scratch).payload.tensors for i in range(updates)]
    sums = {name: np.zeros_like(a) for name, a in base.items()}
    tmp = {name: np.empty_like(a) for name, a in base.items()}

    def ceiling() -> None:
        for i, tensors in enumerate(arrays):
            w = np.float32(1.0 / (i + 1))
            for name, b in tensors.items():
                np.multiply(b, w, out=tmp[name])
                np.add(sums[name], tmp[name], out=sums[name])

    fold_s = _best(fold, repeats)
    ceil_s = _best(ceiling, repeats)
    moved_gb = nbytes * updates / 1e9
    fold_gbs, ceil_gbs = moved_gb / fold_s, moved_gb / ceil_s
    params = {
        "part_bytes": nbytes,
        "updates": updates,
        "rule": rule_name,
        "path": "chunks" if chunked else "message",
        "cores": 1,
    }
    return [
        {
            "benchmark": "aggregation",
            "figure": "fold_throughput",
            "unit": "GB/s",
            "value": round(fold_gbs, 3),
            "ceiling": round(ceil_gbs, 3),
            "ratio": round(fold_gbs / ceil_gbs, 3),
            "seconds": round(fold_s, 4),
            "accumulator_mb": round(state["acc_mb"], 2),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            **params,
        }
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.aggregation", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="64 KB to 4 MB only")
    parser.add_argument("--updates", type=int, default=8, help="updates folded per part")
    parser.add_argument("--repeats", type=int, default=3, help="best of N timings")
    parser.add_argument(
        "--rules",
        default="fedavg,clipped-fedavg",
        help="comma-separated aggregation rules (moe.aggregation.registry)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes-mb", default=None, help="comma-separated part sizes in MB")
    args = parser.parse_args(argv)
    if args.sizes_mb:
        sizes: Sequence[int] = [int(float(x) * MB) for x in args.sizes_mb.split(",")]
    else:
        sizes = QUICK_SIZES if args.quick else FULL_SIZES
    machine = host()
    torch.set_num_threads(1)  # the fold's torch kernels on one core, as the numpy ceiling
    for nbytes in sizes:
        updates = args.updates if nbytes <= 64 * MB else max(2, args.updates // 4)
        for rule in args.rules.split(","):
            for line in measure(nbytes, updates, args.repeats, rule, args.seed):
                print(json.dumps({**line, **machine}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
