"""Local training, evaluation, routing histograms and the centralized reference.

Every function here is a pure function of its arguments (weights as numpy part dicts, data as
numpy arrays, an explicit seed): no global state is read or written, no torch is involved, and
shuffling draws from a numpy Generator seeded per call, so a seed fixes the result.

Speed: a call copies the needed parts into stacked float32 arrays once, then runs plain
mini-batch SGD with the numpy kernels of `moe.model` (`forward` / `backward`): no torch, no
`nn.Module`, no optimizer object, no per-sample Python loop.

Threads are the caller's business, and they matter: training batches are below OpenBLAS's
threading threshold, but `evaluate` on a test set is not, and on a busy 2-core machine a
2-thread OpenBLAS made it 5-20× slower (measured 17-30 ms instead of 0.8-3.7 ms). Callers that
run many of these calls (the simulation, a device agent, the evaluator) should wrap their loop,
once, in `single_threaded_blas()`. Nothing here changes thread settings by itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits  # sklearn's dep

from moe.model import (
    MoEConfig,
    StackedParams,
    backward,
    forward,
    inference_params,
    init_weights,
    predict,
    stack_parts,
    unstack_parts,
)
from moe.parts import expert_part_id
from moe.tensors import PartTensors

Float32Array = NDArray[np.float32]

# Local-training defaults for the federated runs (plain SGD, fresh every round). Measured with
# random matching, 10 of 30 devices per round, 60 rounds, 2 epochs of batches of 16: raising lr
# from 0.1 to 0.5 raised the final accuracy steadily (label-skew ~0.91 → 0.95, fleet ~0.54 →
# 0.67), and lr 0.8 diverged to NaN in one of four runs; 0.3 keeps a margin from that edge.
# `moe.fleet.DEFAULT_DEADLINE_S` is calibrated for 2 epochs. Too large an lr can yield
# non-finite weights (train_loss NaN); aggregation rejects those (it checks finiteness).
DEFAULT_EPOCHS = 2
DEFAULT_BATCH_SIZE = 16
DEFAULT_LR = 0.3


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit BLAS (OpenBLAS / MKL under numpy) to one thread inside the block, then restore.

    For callers that run many small training / evaluation calls: at these matrix sizes extra
    BLAS threads only add synchronisation, badly so on a shared machine. Costs ~0.2 ms to
    enter, so wrap a whole run, not each call. The limit is process-wide while it lasts.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@dataclass(frozen=True, slots=True)
class LocalResult:
    """What one device's local training round produced.

    Attributes:
        parts: the trained parts only: ``shared`` and ``expert-e`` for each assigned e
            (float32 arrays, fresh copies).
        num_samples: the device's sample count (the ``shared`` part's aggregation weight).
        expert_samples: assigned expert -> samples whose top-k' (masked gate, after training)
            includes it; the expert part's aggregation weight. May be 0.
        expert_loss: assigned expert -> mean cross-entropy of the samples routed to it (after
            training); experts with 0 routed samples are absent.
        train_loss: mean cross-entropy over all local samples after training (masked model).
        steps: SGD steps taken.
        initial_loss: root mean squared cross-entropy of the local samples under the global
            parts the device started from (masked model, before training): Oort's statistical
            utility per sample, measured before the device learned its own data.
        initial_expert_loss: the same over the samples the masked gate routed to each expert.
    """

    parts: Mapping[str, Mapping[str, Float32Array]]
    num_samples: int
    expert_samples: Mapping[int, int]
    expert_loss: Mapping[int, float]
    train_loss: float
    steps: int
    initial_loss: float = math.nan
    initial_expert_loss: Mapping[int, float] = field(default_factory=dict)


def _as_inputs(
    config: MoEConfig, x: np.ndarray, y: np.ndarray | None = None
) -> tuple[Float32Array, NDArray[np.int64]]:
    xa: Float32Array = np.ascontiguousarray(x, dtype=np.float32)
    if xa.ndim != 2 or xa.shape[1] != config.input_dim:
        raise ValueError(f"x must be (samples, {config.input_dim}), got {xa.shape}")
    if y is None:
        return xa, np.zeros(0, dtype=np.int64)
    ya: NDArray[np.int64] = np.ascontiguousarray(y, dtype=np.int64)
    if ya.shape != (xa.shape[0],):
        raise ValueError(f"y has shape {ya.shape}, expected ({xa.shape[0]},)")
    if ya.size and (ya.min() < 0 or ya.max() >= config.num_classes):
        raise ValueError(f"labels outside 0..{config.num_classes - 1}")
    return xa, ya


def _cross_entropy(logits: Float32Array, y: NDArray[np.int64]) -> tuple[Float32Array, Float32Array]:
    """Per-sample cross-entropy and the softmax probabilities (numerically stable)."""
    shifted = logits - logits.max(1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(1, keepdims=True)
    rows = np.arange(y.shape[0])
    losses: Float32Array = np.log(total[:, 0]) - shifted[rows, y]
    probs: Float32Array = exp / total
    return losses, probs


def _check_experts(config: MoEConfig, experts: Sequence[int]) -> list[int]:
    out = sorted({int(e) for e in experts})
    if len(out) != len(experts):
        raise ValueError(f"assigned experts repeat: {list(experts)}")
    if not out:
        raise ValueError("assigned_experts must not be empty")
    if out[0] < 0 or out[-1] >= config.num_experts:
        raise ValueError(f"assigned experts {out} outside 0..{config.num_experts - 1}")
    return out


# The expert width the learning rates were tuned at (the small model's).
_TUNED_EXPERT_HIDDEN = 64


def lr_scales(expert_hidden: int) -> tuple[float, ...]:
    """Per-tensor multipliers of the learning rate, in `StackedParams` order: 1 for every
    tensor but the experts' output weights `w2`, whose step is scaled by 64 / expert_hidden
    when the experts are wider than 64.

    Why: one SGD step on `w2` moves an expert's output by lr × |d_y| × |z|², and |z|² (the
    squared norm of the expert's hidden activations) grows with its width: at the large
    preset's 16,384 hidden units, 256 times the small model's at the same rate, and the model
    stayed at chance (0.08-0.11 accuracy over 12 simulated rounds; 0.31 with the scaling,
    against the small model's 0.37, `fedmoe.scenario` defaults, fitness); scaling that one
    tensor's rate by 1 / width, as µP does for a layer's fan-in (Yang & Hu, 2021), keeps the
    step the small model was tuned at. The small model is unchanged (every multiplier is 1).
    """
    w2 = min(1.0, _TUNED_EXPERT_HIDDEN / expert_hidden)
    return tuple(w2 if name == "w2" else 1.0 for name in StackedParams._fields)


def _sgd(
    params: StackedParams,
    x: Float32Array,
    y: NDArray[np.int64],
    top_k: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    rng: np.random.Generator,
) -> int:
    """Mini-batch SGD (optionally heavy-ball momentum) in place on `params`; returns steps.

    Each tensor steps at `lr` times its `lr_scales` entry (see `lr_scales`)."""
    if epochs < 0 or batch_size < 1 or lr <= 0 or not 0 <= momentum < 1:
        raise ValueError("need epochs >= 0, batch_size >= 1, lr > 0, 0 <= momentum < 1")
    buffers = [np.zeros_like(p) for p in params] if momentum > 0 else []
    rates = [np.float32(lr * scale) for scale in lr_scales(params.w2.shape[2])]
    n = x.shape[0]
    steps = 0
    for _ in range(epochs):
        # One gather per epoch; the batches are then views (cheaper than a gather per batch).
        perm = rng.permutation(n)
        xp, yp = x[perm], y[perm]
        for start in range(0, n, batch_size):
            xb, yb = xp[start : start + batch_size], yp[start : start + batch_size]
            act = forward(params, xb, top_k)
            _, dlogits = _cross_entropy(act.logits, yb)
            dlogits[np.arange(yb.shape[0]), yb] -= 1
            dlogits /= yb.shape[0]  # mean loss over the batch
            grads = backward(params, act, dlogits)
            if momentum > 0:
                for p, g, b, rate in zip(params, grads, buffers, rates, strict=True):
                    b *= momentum
                    b += g
                    p -= rate * b
            else:
                for p, g, rate in zip(params, grads, rates, strict=True):
                    p -= rate * g
            steps += 1
    return steps


def train_local(
    config: MoEConfig,
    parts: Mapping[str, PartTensors],
    x: np.ndarray,
    y: np.ndarray,
    assigned_experts: Sequence[int],
    *,
    seed: int,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    momentum: float = 0.0,
) -> LocalResult:
    """Train the shared part and only the assigned experts on one device's data.

    The gate is masked to the assigned experts (unassigned logits are -inf before the top-k,
    k' = min(top_k, len(assigned))). Only the assigned experts' tensors are materialised, which
    is the same function: with the sigmoid gate of `moe.model` an expert's weight depends only
    on its own gate row, so absent experts change nothing but the selection. Unassigned
    experts' parameters and gate rows are therefore untouched and not returned.

    Args:
        config: the model shape.
        parts: the global weights (at least ``shared`` and the assigned experts' parts).
        x: local inputs, (n, input_dim), n >= 1.
        y: local labels, (n,), ints in [0, num_classes).
        assigned_experts: the experts this device trains (distinct, non-empty).
        epochs: passes over the local data.
        batch_size: mini-batch size (the last batch of an epoch may be smaller).
        lr: SGD learning rate.
        seed: fixes the shuffling, hence the result.
        momentum: heavy-ball momentum (buffers start at zero every call).

    Returns:
        The trained parts and the per-expert routing statistics (see `LocalResult`).

    Raises:
        ValueError: bad shapes, empty data, bad expert indices or hyper-parameters.
    """
    experts = _check_experts(config, assigned_experts)
    xa, ya = _as_inputs(config, x, y)
    if xa.shape[0] == 0:
        raise ValueError("no local samples")
    params = stack_parts(parts, experts)
    initial_loss, initial_expert_loss = _rms_losses(params, xa, ya, config.top_k, experts)
    steps = _sgd(
        params,
        xa,
        ya,
        config.top_k,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        rng=np.random.default_rng(seed),
    )
    # One pass after training for the statistics the profiler and aggregator need.
    losses, sel = _losses_and_selection(params, xa, ya, config.top_k)
    counts = sel.sum(0)
    loss_sums = (sel * losses[:, None]).sum(0, dtype=np.float64)
    return LocalResult(
        parts=unstack_parts(params, experts),
        num_samples=int(xa.shape[0]),
        expert_samples={e: int(c) for e, c in zip(experts, counts, strict=True)},
        expert_loss={
            e: float(s / c) for e, c, s in zip(experts, counts, loss_sums, strict=True) if c
        },
        train_loss=float(losses.mean(dtype=np.float64)),
        steps=steps,
        initial_loss=initial_loss,
        initial_expert_loss=initial_expert_loss,
    )


# Elements of one (A, samples, expert_hidden) activation array in `_losses_and_selection`:
# a statistics pass runs `forward` over at most this / (A × expert_hidden) samples at a time
# (32 MiB per array; `forward` keeps three such). Only the large preset's many wide experts
# (the centralized reference: 64 × 16,384 per sample) get split; a device's few small or large
# experts, and the small model's centralized 8 × 64, fit their data in one pass, bit for bit
# the unsplit result.
STATS_BLOCK_ELEMENTS = 2**23


def _losses_and_selection(
    params: StackedParams, x: Float32Array, y: NDArray[np.int64], top_k: int
) -> tuple[Float32Array, NDArray[np.bool_]]:
    """Per-sample cross-entropy and the (n, A) top-k selection of `forward`, in sample blocks
    (`STATS_BLOCK_ELEMENTS`) so the dense activations stay bounded."""
    width = params.w1.shape[0] * params.w1.shape[1]
    step = max(1, STATS_BLOCK_ELEMENTS // max(width, 1))
    losses: list[Float32Array] = []
    selected: list[NDArray[np.bool_]] = []
    for start in range(0, max(x.shape[0], 1), step):  # an empty x: one empty block
        act = forward(params, x[start : start + step], top_k)
        block_losses, _ = _cross_entropy(act.logits, y[start : start + step])
        losses.append(block_losses)
        selected.append(act.selected_mask())
    if len(losses) == 1:
        return losses[0], selected[0]
    return np.concatenate(losses), np.concatenate(selected)


def _rms_losses(
    params: StackedParams,
    x: Float32Array,
    y: NDArray[np.int64],
    top_k: int,
    experts: Sequence[int],
) -> tuple[float, dict[int, float]]:
    """RMS per-sample cross-entropy over all samples and over those routed to each expert."""
    losses, sel = _losses_and_selection(params, x, y, top_k)
    sq = losses.astype(np.float64) ** 2
    counts = sel.sum(0)
    sums = (sel * sq[:, None]).sum(0)
    per_expert = {e: math.sqrt(s / c) for e, c, s in zip(experts, counts, sums, strict=True) if c}
    return math.sqrt(float(sq.mean())), per_expert


def routing_histogram(
    config: MoEConfig, parts: Mapping[str, PartTensors], x: np.ndarray
) -> NDArray[np.float64]:
    """Share of the device's routing slots the global (unmasked) gate gives each expert.

    Defined as top-k membership: ``hist[e] = #{samples whose top-k includes e} / (n * k)``, so
    it sums to 1 and ``hist[e] * k`` is the fraction of samples routed to e. Only the encoder
    and the gate run (cheap). An empty `x` gives all zeros.

    Args:
        config: the model shape.
        parts: the global weights: ``shared`` and every ``expert-e``, of which only the gate
            row (``gate.weight``, ``gate.bias``) is read, so a device that holds only its own
            experts can pass gate-only parts for the rest.
        x: local inputs, (n, input_dim).

    Returns:
        (E,) float64.
    """
    xa, _ = _as_inputs(config, x)
    n, k = xa.shape[0], config.top_k
    if n == 0:
        return np.zeros(config.num_experts)
    shared = parts["shared"]
    experts = [parts[expert_part_id(e)] for e in range(config.num_experts)]
    gate_w = np.stack([p["gate.weight"] for p in experts])
    gate_b = np.concatenate([p["gate.bias"].reshape(-1) for p in experts])
    h = np.maximum(xa @ shared["encoder.weight"].T + shared["encoder.bias"], 0)
    logits = h @ gate_w.T + gate_b
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    counts = np.bincount(top.reshape(-1), minlength=config.num_experts)
    hist: NDArray[np.float64] = counts.astype(np.float64) / (n * k)
    return hist


def evaluate(
    config: MoEConfig,
    parts: Mapping[str, PartTensors],
    x: np.ndarray,
    y: np.ndarray,
    *,
    block_rows: int | None = None,
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of the global (unmasked, top-k) model on (x, y).

    Args:
        config: the model shape.
        parts: every part's weights (read, never copied when float32).
        x: inputs, (n, input_dim).
        y: labels, (n,).
        block_rows: samples per expert block of `moe.model.predict` (None: its memory bound,
            one block for the small model); any value gives the same result up to rounding.

    Returns:
        (accuracy, loss); (0.0, 0.0) for an empty set.
    """
    xa, ya = _as_inputs(config, x, y)
    if xa.shape[0] == 0:
        return 0.0, 0.0
    # Views of the parts, not a stacked copy (the large preset's experts are 541 MB), and
    # `predict` bounds its own peak by running the routed samples in blocks.
    params = inference_params(parts, range(config.num_experts))
    logits = predict(params, xa, config.top_k, block_rows=block_rows)
    losses, _ = _cross_entropy(logits, ya)
    acc = float((logits.argmax(1) == ya).mean())
    return acc, float(losses.mean(dtype=np.float64))


def train_centralized(
    config: MoEConfig,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    seed: int,
    batch_size: int = 32,
    lr: float = 0.05,
    momentum: float = 0.9,
) -> dict[str, dict[str, Float32Array]]:
    """The same model trained on pooled data (every expert, unmasked gate): the reference
    accuracy federated runs aim for.

    Args:
        config: the model shape.
        x: pooled inputs, (n, input_dim).
        y: pooled labels, (n,).
        epochs: passes over the data.
        seed: fixes the initial weights (`init_weights`) and the shuffling.
        batch_size: mini-batch size.
        lr: SGD learning rate.
        momentum: heavy-ball momentum.

    Returns:
        Every part's trained weights.
    """
    start = init_weights(config, seed)
    result = train_local(
        config,
        start,
        x,
        y,
        range(config.num_experts),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        momentum=momentum,
    )
    return {pid: dict(t) for pid, t in result.parts.items()}
