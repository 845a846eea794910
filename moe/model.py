"""The MoE model: config, seeded init, and a functional forward over stacked parameters.

Architecture (all Linear weights in torch's ``(out, in)`` layout)::

    h      = relu(encoder(x))                         shared encoder, (B, hidden)
    g_e    = gate_e · h + b_e                         one gate row per expert, (B, E)
    S      = top-k of g over the allowed experts      routing (k' = min(k, #allowed))
    w_e    = sigmoid(g_e) if e ∈ S else 0             gate weights, no renormalisation
    mix    = h + Σ_e w_e · expert_e(h)                experts are MLPs, residual add
    logits = head(mix)                                shared head, (B, classes)

Why a sigmoid gate without renormalisation: the prototype renormalised a softmax over the
selected experts. With one selected expert (k = 1, or a device assigned one expert) that weight
is identically 1, so the gate gets no gradient and never learns. A softmax over *all* experts
would fix the gradient but couples gate row e to every other row (the denominator), while rows
are aggregated over different device sets, and dilutes each expert's output by ~1/E. The
sigmoid weight of expert e depends only on its own gate row, so (a) the gate row always gets
gradient, (b) masking unassigned experts to -inf before the top-k changes nothing else, so local
training computes exactly the global model's function restricted to the assigned experts, and
(c) part ``expert-e`` (MLP + gate row e) is self-contained: averaging it over the devices that
trained e is meaningful.

The hot path is numpy: `forward` and a hand-written `backward` over `StackedParams` (the
experts' arrays stacked on a leading axis, so every expert runs in one batched matmul). At these
sizes (batches of ~16-64, width 64) torch's per-op and autograd overhead dominated: a training
step took ~450 µs with torch autograd and ~100 µs with these kernels. `MoEModel` is the same
model as a plain torch module; it is the reference the kernels are tested against and the
module for callers that want one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from moe.parts import Parts, expert_part_id, join_parts, split_state
from moe.tensors import PartTensors

Float32Array = NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class MoEConfig:
    """Shape of the MoE model; `layout_version` versions the part layout contract.

    Attributes:
        input_dim: features per sample (64 for 8×8 digits).
        hidden: width of the shared encoder output, the experts' input and output.
        expert_hidden: hidden width inside each expert MLP.
        num_experts: E.
        top_k: experts each sample is routed to (at most).
        num_classes: output classes.
        layout_version: version of the part layout (names, shapes, dtypes) on the wire.
    """

    input_dim: int = 64
    hidden: int = 64
    expert_hidden: int = 64
    num_experts: int = 8
    top_k: int = 2
    num_classes: int = 10
    layout_version: int = 1

    def __post_init__(self) -> None:
        for name in ("input_dim", "hidden", "expert_hidden", "num_experts", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"MoEConfig.{name} must be >= 1")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError("MoEConfig.top_k must be in [1, num_experts]")


class StackedParams(NamedTuple):
    """Model weights for the forward pass, experts stacked on a leading axis of size A.

    A is the number of experts present (all E for the global model, the assigned ones during
    local training); row i of every expert array belongs to the same expert. The same type
    holds gradients (`backward`). All arrays are float32.
    """

    enc_w: Float32Array  # (hidden, input_dim)
    enc_b: Float32Array  # (hidden,)
    gate_w: Float32Array  # (A, hidden)
    gate_b: Float32Array  # (A,)
    w1: Float32Array  # (A, expert_hidden, hidden)
    b1: Float32Array  # (A, expert_hidden)
    w2: Float32Array  # (A, hidden, expert_hidden)
    b2: Float32Array  # (A, hidden)
    head_w: Float32Array  # (classes, hidden)
    head_b: Float32Array  # (classes,)


class Activations(NamedTuple):
    """One forward pass: the outputs and what `backward` needs."""

    logits: Float32Array  # (B, classes)
    gate_logits: Float32Array  # (B, A)
    selected: NDArray[np.bool_] | None  # (B, A) top-k mask; None when every expert is selected
    x: Float32Array  # (B, input_dim)
    pre_h: Float32Array  # (B, hidden), encoder pre-activation
    h: Float32Array  # (B, hidden)
    gate_sig: Float32Array  # (B, A), sigmoid of the gate logits
    weights: Float32Array  # (B, A), gate weights (0 where not selected)
    pre_z: Float32Array  # (A, B, expert_hidden)
    z: Float32Array  # (A, B, expert_hidden)
    expert_out: Float32Array  # (A, B, hidden)
    mix: Float32Array  # (B, hidden)

    def selected_mask(self) -> NDArray[np.bool_]:
        """The (B, A) top-k selection mask (materialised when all experts are selected)."""
        if self.selected is None:
            return np.ones(self.gate_logits.shape, dtype=np.bool_)
        return self.selected


def forward(params: StackedParams, x: Float32Array, top_k: int) -> Activations:
    """The model's function over the experts present in `params` (others are masked out).

    Numpy, float32. Experts absent from `params` behave exactly as if their gate logit were
    -inf: the sigmoid weight of a present expert does not depend on the others.

    Args:
        params: stacked weights.
        x: inputs, (B, input_dim) float32.
        top_k: the configured k; k' = min(top_k, A) experts are selected per sample.

    Returns:
        The logits and the intermediates `backward` needs.
    """
    pre_h = x @ params.enc_w.T
    pre_h += params.enc_b
    h = np.maximum(pre_h, 0)
    g = h @ params.gate_w.T
    g += params.gate_b
    num_present = g.shape[1]
    k = min(top_k, num_present)
    sig = 0.5 * (1 + np.tanh(0.5 * g))  # the sigmoid, without exp overflow warnings
    selected: NDArray[np.bool_] | None = None
    if k < num_present:
        top = np.argpartition(-g, k - 1, axis=1)[:, :k]
        selected = np.zeros(g.shape, dtype=np.bool_)
        np.put_along_axis(selected, top, True, axis=1)
        weights = sig * selected
    else:
        weights = sig  # every present expert is selected (the common case in training)
    # All present experts run densely in two batched matmuls; unselected ones get weight 0,
    # hence zero gradient. At these sizes this beats gathering per-expert sample subsets.
    pre_z = np.matmul(h, params.w1.transpose(0, 2, 1))
    pre_z += params.b1[:, None, :]
    z = np.maximum(pre_z, 0)
    ys = np.matmul(z, params.w2.transpose(0, 2, 1))
    ys += params.b2[:, None, :]
    mix = h + (weights.T[:, :, None] * ys).sum(0)
    logits = mix @ params.head_w.T
    logits += params.head_b
    return Activations(logits, g, selected, x, pre_h, h, sig, weights, pre_z, z, ys, mix)


class ExpertWeights(NamedTuple):
    """One expert's MLP in torch's layout (views into whatever holds them, never copies)."""

    w1: Float32Array  # (expert_hidden, hidden)
    b1: Float32Array  # (expert_hidden,)
    w2: Float32Array  # (hidden, expert_hidden)
    b2: Float32Array  # (hidden,)


class InferenceParams(NamedTuple):
    """Model weights for `predict`: the gate stacked (small), each expert's MLP on its own.

    Unlike `StackedParams` the experts are not stacked into one array, so building these from
    parts (`inference_params`) copies no expert: at the large preset (64 experts of 8.45 MB)
    stacking would copy the whole model, 541 MB, at every evaluation.
    """

    enc_w: Float32Array  # (hidden, input_dim)
    enc_b: Float32Array  # (hidden,)
    gate_w: Float32Array  # (A, hidden)
    gate_b: Float32Array  # (A,)
    experts: tuple[ExpertWeights, ...]  # A of them, in the gate's row order
    head_w: Float32Array  # (classes, hidden)
    head_b: Float32Array  # (classes,)


# Elements of one expert's (rows, expert_hidden) activation block in `predict`: its samples
# go through an expert in blocks of at most this / expert_hidden rows, so the peak stays at
# 8 MiB of float32 (128 samples at the large preset's 16,384-wide experts) whatever the test
# set. The small model's 64-wide experts take 32,768 samples per block: any test set here runs
# in one block, the same operations as an unblocked pass, bit for bit.
PREDICT_BLOCK_ELEMENTS = 2**21


def inference_params(parts: Mapping[str, PartTensors], experts: Sequence[int]) -> InferenceParams:
    """`predict`'s weights from per-part arrays: views of float32 arrays (copies otherwise),
    the gate rows stacked (a copy of A × (hidden + 1) floats)."""
    shared = parts["shared"]
    ex = [parts[expert_part_id(e)] for e in experts]

    def f32(a: NDArray[np.float32]) -> Float32Array:
        return np.asarray(a, dtype=np.float32)

    return InferenceParams(
        enc_w=f32(shared["encoder.weight"]),
        enc_b=f32(shared["encoder.bias"]),
        gate_w=np.stack([p["gate.weight"] for p in ex]).astype(np.float32, copy=False),
        gate_b=np.concatenate([p["gate.bias"].reshape(-1) for p in ex]).astype(
            np.float32, copy=False
        ),
        experts=tuple(
            ExpertWeights(
                f32(p["fc1.weight"]), f32(p["fc1.bias"]), f32(p["fc2.weight"]), f32(p["fc2.bias"])
            )
            for p in ex
        ),
        head_w=f32(shared["head.weight"]),
        head_b=f32(shared["head.bias"]),
    )


def _unstacked(params: StackedParams) -> InferenceParams:
    """The same weights as `InferenceParams` (views of the stacked arrays)."""
    return InferenceParams(
        enc_w=params.enc_w,
        enc_b=params.enc_b,
        gate_w=params.gate_w,
        gate_b=params.gate_b,
        experts=tuple(
            ExpertWeights(params.w1[i], params.b1[i], params.w2[i], params.b2[i])
            for i in range(params.gate_b.shape[0])
        ),
        head_w=params.head_w,
        head_b=params.head_b,
    )


def predict(
    params: StackedParams | InferenceParams,
    x: Float32Array,
    top_k: int,
    *,
    block_rows: int | None = None,
) -> Float32Array:
    """Class logits only, the same function as `forward` computed sparsely for inference.

    Each expert runs only on the samples routed to it (k'/A of the dense work), which is what
    makes evaluating the full E-expert model on a large test set cheap. No intermediates kept.
    Those samples go through the expert in blocks of `block_rows` (default: as many as fit
    `PREDICT_BLOCK_ELEMENTS`), so the memory peak does not grow with the test set; blocking
    changes no sample's result beyond float rounding (none for a single block).
    """
    p = _unstacked(params) if isinstance(params, StackedParams) else params
    h: Float32Array = x @ p.enc_w.T
    h += p.enc_b
    np.maximum(h, 0, out=h)
    g = h @ p.gate_w.T
    g += p.gate_b
    num_present = g.shape[1]
    k = min(top_k, num_present)
    top = np.argpartition(-g, k - 1, axis=1)[:, :k] if k < num_present else None
    sig = 0.5 * (1 + np.tanh(0.5 * g))
    mix = h.copy()
    for i, ew in enumerate(p.experts):
        routed = np.flatnonzero((top == i).any(1)) if top is not None else None
        count = h.shape[0] if routed is None else routed.shape[0]
        step = block_rows or max(1, PREDICT_BLOCK_ELEMENTS // max(ew.w1.shape[0], 1))
        for start in range(0, count, step):
            rows = slice(start, start + step) if routed is None else routed[start : start + step]
            z = h[rows] @ ew.w1.T
            z += ew.b1
            np.maximum(z, 0, out=z)
            y = z @ ew.w2.T
            y += ew.b2
            y *= sig[rows, i][:, None]
            mix[rows] += y
    logits: Float32Array = mix @ p.head_w.T
    logits += p.head_b
    return logits


def backward(params: StackedParams, act: Activations, dlogits: Float32Array) -> StackedParams:
    """Gradients of a loss w.r.t. every weight, given d(loss)/d(logits) of `forward`'s output.

    Hand-written reverse mode of `forward` (about 4× faster than torch autograd at these
    sizes); `MoEModel` (torch) is the reference the tests check it against.
    """
    d_mix = dlogits @ params.head_w
    w_t = act.weights.T[:, :, None]  # (A, B, 1)
    d_ys = w_t * d_mix  # (A, B, hidden)
    d_w = (d_mix[None] * act.expert_out).sum(2).T  # (B, A)
    d_w2 = np.matmul(d_ys.transpose(0, 2, 1), act.z)
    d_pre_z = np.matmul(d_ys, params.w2)
    d_pre_z *= act.pre_z > 0
    d_w1 = np.matmul(d_pre_z.transpose(0, 2, 1), act.h)
    d_g = d_w * act.gate_sig * (1 - act.gate_sig)
    if act.selected is not None:
        d_g *= act.selected
    d_h = d_mix + d_g @ params.gate_w + np.matmul(d_pre_z, params.w1).sum(0)
    d_h *= act.pre_h > 0
    return StackedParams(
        enc_w=d_h.T @ act.x,
        enc_b=d_h.sum(0),
        gate_w=d_g.T @ act.h,
        gate_b=d_g.sum(0),
        w1=d_w1,
        b1=d_pre_z.sum(1),
        w2=d_w2,
        b2=d_ys.sum(1),
        head_w=dlogits.T @ act.mix,
        head_b=dlogits.sum(0),
    )


def stack_parts(parts: Mapping[str, PartTensors], experts: Sequence[int]) -> StackedParams:
    """Build forward weights from per-part arrays (always copies, never aliases `parts`).

    Args:
        parts: at least ``shared`` and ``expert-e`` for every e in `experts`.
        experts: which experts to stack, in this order.

    Returns:
        The stacked float32 weights.
    """
    shared = parts["shared"]
    ex = [parts[expert_part_id(e)] for e in experts]

    def own(a: NDArray[np.float32]) -> Float32Array:
        return np.array(a, dtype=np.float32, copy=True)

    def stacked(name: str) -> Float32Array:
        return np.stack([p[name] for p in ex]).astype(np.float32, copy=False)

    return StackedParams(
        enc_w=own(shared["encoder.weight"]),
        enc_b=own(shared["encoder.bias"]),
        gate_w=stacked("gate.weight"),
        gate_b=stacked("gate.bias").reshape(len(ex)),
        w1=stacked("fc1.weight"),
        b1=stacked("fc1.bias"),
        w2=stacked("fc2.weight"),
        b2=stacked("fc2.bias"),
        head_w=own(shared["head.weight"]),
        head_b=own(shared["head.bias"]),
    )


def unstack_parts(params: StackedParams, experts: Sequence[int]) -> Parts:
    """Inverse of `stack_parts`: the ``shared`` part and one part per stacked expert (copies)."""
    shared = {
        "encoder.weight": params.enc_w.copy(),
        "encoder.bias": params.enc_b.copy(),
        "head.weight": params.head_w.copy(),
        "head.bias": params.head_b.copy(),
    }
    out: Parts = {"shared": shared}
    for i, e in enumerate(experts):
        out[expert_part_id(e)] = {
            "fc1.weight": params.w1[i].copy(),
            "fc1.bias": params.b1[i].copy(),
            "fc2.weight": params.w2[i].copy(),
            "fc2.bias": params.b2[i].copy(),
            "gate.weight": params.gate_w[i].copy(),
            "gate.bias": params.gate_b[i : i + 1].copy(),
        }
    return out


def init_weights(config: MoEConfig, seed: int) -> Parts:
    """Seeded initial weights of every part, independent of torch's global RNG.

    Each Linear gets torch's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and
    bias, drawn from a numpy Generator so the result depends only on (config, seed).

    Args:
        config: the model shape.
        seed: the seed.

    Returns:
        Part id -> parameter name -> float32 array (see `moe.parts.model_layout`).
    """
    rng = np.random.default_rng(seed)

    def linear(out_dim: int, in_dim: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        bound = 1.0 / math.sqrt(in_dim)
        w = rng.uniform(-bound, bound, size=(out_dim, in_dim)).astype(np.float32)
        b = rng.uniform(-bound, bound, size=(out_dim,)).astype(np.float32)
        return w, b

    c = config
    state: dict[str, NDArray[np.float32]] = {}
    state["encoder.weight"], state["encoder.bias"] = linear(c.hidden, c.input_dim)
    state["gate.weight"], state["gate.bias"] = linear(c.num_experts, c.hidden)
    for e in range(c.num_experts):
        w1, b1 = linear(c.expert_hidden, c.hidden)
        w2, b2 = linear(c.hidden, c.expert_hidden)
        state[f"experts.{e}.fc1.weight"], state[f"experts.{e}.fc1.bias"] = w1, b1
        state[f"experts.{e}.fc2.weight"], state[f"experts.{e}.fc2.bias"] = w2, b2
    state["head.weight"], state["head.bias"] = linear(c.num_classes, c.hidden)
    return split_state(state)


class _Expert(nn.Module):
    def __init__(self, hidden: int, expert_hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, expert_hidden)
        self.fc2 = nn.Linear(expert_hidden, hidden)

    def forward(self, h: Tensor) -> Tensor:
        out: Tensor = self.fc2(torch.relu(self.fc1(h)))
        return out


class MoEModel(nn.Module):
    """The model as a torch module: the plain, per-expert reference of `forward`.

    Its ``state_dict`` names are the flat names of `moe.parts.split_state` / `join_parts`. The
    training hot path does not use it (see `moe.training`); tests check the numpy kernels
    against its outputs and autograd gradients.

    Args:
        config: the model shape.
    """

    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = nn.Linear(config.input_dim, config.hidden)
        self.gate = nn.Linear(config.hidden, config.num_experts)
        self.experts = nn.ModuleList(
            _Expert(config.hidden, config.expert_hidden) for _ in range(config.num_experts)
        )
        self.head = nn.Linear(config.hidden, config.num_classes)

    def forward(self, x: Tensor, allowed: Sequence[int] | None = None) -> Tensor:
        """Class logits; `allowed` masks the gate to those experts (None: all of them)."""
        h = torch.relu(self.encoder(x))
        g = self.gate(h)
        if allowed is not None:
            mask = torch.full_like(g, -math.inf)
            mask[:, list(allowed)] = 0.0
            g = g + mask
        k = min(self.config.top_k, self.config.num_experts if allowed is None else len(allowed))
        top = torch.topk(g, k, dim=1).indices
        weights = torch.zeros_like(g).scatter(1, top, torch.sigmoid(g.gather(1, top)))
        mix = h
        for e, expert in enumerate(self.experts):
            mix = mix + weights[:, e : e + 1] * expert(h)
        out: Tensor = self.head(mix)
        return out

    def load_parts(self, parts: Mapping[str, PartTensors]) -> None:
        """Load every part's weights (strict: all parts and names must be present)."""
        state = {k: torch.from_numpy(v) for k, v in join_parts(parts).items()}
        self.load_state_dict(state, strict=True)
