"""The numpy model kernels against the torch reference module, and seeded init."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from moe.model import (
    MoEConfig,
    MoEModel,
    backward,
    forward,
    inference_params,
    init_weights,
    predict,
    stack_parts,
    unstack_parts,
)
from moe.parts import Parts, check_parts, expert_part_id, join_parts, model_layout, split_state


def _inputs(n: int, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, dim), dtype=np.float32), rng.integers(0, 10, n)


def _torch_model(config: MoEConfig, parts: Parts) -> MoEModel:
    model = MoEModel(config)
    model.load_parts(parts)
    return model


def test_config_rejects_impossible_shapes() -> None:
    with pytest.raises(ValueError, match="top_k"):
        MoEConfig(num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="hidden"):
        MoEConfig(hidden=0)


def test_init_is_seeded_and_matches_the_layout() -> None:
    config = MoEConfig()
    a, b, c = init_weights(config, 7), init_weights(config, 7), init_weights(config, 8)
    check_parts(a, model_layout(config))
    for pid in a:
        for name in a[pid]:
            np.testing.assert_array_equal(a[pid][name], b[pid][name])
    assert not np.array_equal(a["shared"]["encoder.weight"], c["shared"]["encoder.weight"])
    # torch's default Linear init range, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    assert np.abs(a["shared"]["encoder.weight"]).max() <= 1 / np.sqrt(config.input_dim)


@pytest.mark.parametrize(
    ("top_k", "experts"),
    [(2, range(8)), (1, range(8)), (2, [1, 4, 6]), (2, [3]), (1, [2, 5])],
)
def test_forward_and_predict_match_the_torch_module(top_k: int, experts: Sequence[int]) -> None:
    config = MoEConfig(top_k=top_k)
    parts = init_weights(config, 1)
    x, _ = _inputs(40)
    params = stack_parts(parts, experts)
    ours = forward(params, x, top_k).logits
    allowed = None if len(experts) == config.num_experts else experts
    with torch.no_grad():
        ref = _torch_model(config, parts)(torch.from_numpy(x), allowed).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(predict(params, x, top_k), ours, rtol=1e-5, atol=1e-5)
    assert ours.dtype == np.float32


@pytest.mark.parametrize(("top_k", "experts"), [(2, range(8)), (1, [2, 5]), (3, [0, 1])])
def test_predict_from_parts_and_in_blocks_is_the_stacked_pass(
    top_k: int, experts: Sequence[int]
) -> None:
    """`evaluate`'s path (views of the parts, routed samples in blocks) computes the stacked
    pass's logits: bit for bit in one block, up to rounding in any blocks."""
    config = MoEConfig(top_k=top_k)
    parts = init_weights(config, 4)
    x, _ = _inputs(101, seed=5)
    whole = predict(stack_parts(parts, experts), x, top_k)
    views = inference_params(parts, experts)
    assert views.experts[0].w1 is parts[expert_part_id(experts[0])]["fc1.weight"]  # no copy
    np.testing.assert_array_equal(predict(views, x, top_k), whole)
    for rows in (1, 7, 64):
        blocked = predict(views, x, top_k, block_rows=rows)
        np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("top_k", "experts"), [(2, [0, 3, 5]), (1, [2, 7]), (1, [4]), (2, [1])])
def test_backward_matches_torch_autograd_of_the_masked_model(
    top_k: int, experts: Sequence[int]
) -> None:
    config = MoEConfig(top_k=top_k)
    parts = init_weights(config, 2)
    x, y = _inputs(24, seed=3)
    # Ours: only the assigned experts are materialised.
    params = stack_parts(parts, experts)
    act = forward(params, x, top_k)
    shifted = act.logits - act.logits.max(1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    probs[np.arange(len(y)), y] -= 1
    grads = unstack_parts(backward(params, act, probs / len(y)), experts)
    # Reference: the full torch model with the gate masked to the assigned experts.
    model = _torch_model(config, parts)
    loss = torch.nn.functional.cross_entropy(
        model(torch.from_numpy(x), experts), torch.from_numpy(y)
    )
    loss.backward()
    ref = split_state({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    for pid, tensors in grads.items():
        for name, g in tensors.items():
            np.testing.assert_allclose(g, ref[pid][name], rtol=1e-4, atol=1e-6, err_msg=pid)
    # The masking leaves every unassigned expert (MLP and gate row) without gradient.
    for e in set(range(config.num_experts)) - set(experts):
        for name, g in ref[expert_part_id(e)].items():
            assert not g.any(), (e, name)


def test_a_single_assigned_expert_with_top1_gets_gate_gradient() -> None:
    """The prototype's pitfall: a renormalised top-1 weight is constant, its gate is frozen."""
    config = MoEConfig(top_k=1)
    parts = init_weights(config, 4)
    x, y = _inputs(16)
    params = stack_parts(parts, [5])
    act = forward(params, x, 1)
    grads = backward(params, act, np.full_like(act.logits, 0.1) - (y[:, None] == np.arange(10)))
    assert np.abs(grads.gate_w).sum() > 0
    assert np.abs(grads.gate_b).sum() > 0


def test_stack_and_unstack_copy_and_round_trip() -> None:
    config = MoEConfig()
    parts = init_weights(config, 0)
    params = stack_parts(parts, [2, 6])
    params.enc_w[...] = 0  # writing the stacked arrays must not touch the input parts
    assert parts["shared"]["encoder.weight"].any()
    back = unstack_parts(stack_parts(parts, [2, 6]), [2, 6])
    assert set(back) == {"shared", "expert-2", "expert-6"}
    for pid, tensors in back.items():
        for name, arr in tensors.items():
            np.testing.assert_array_equal(arr, parts[pid][name])


def test_module_state_dict_round_trips_through_parts() -> None:
    config = MoEConfig(num_experts=3)
    parts = init_weights(config, 5)
    model = _torch_model(config, parts)
    again = split_state(model)
    flat = join_parts(parts)
    for name, tensor in model.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), flat[name])
    for pid in parts:
        for name in parts[pid]:
            np.testing.assert_array_equal(again[pid][name], parts[pid][name])


def test_huge_gate_logits_do_not_overflow() -> None:
    config = MoEConfig()
    parts = init_weights(config, 0)
    params = stack_parts(parts, range(8))
    params.gate_b[:] = np.array([1e4, -1e4] * 4, dtype=np.float32)
    x, _ = _inputs(8)
    act = forward(params, x, 2)  # pytest turns a RuntimeWarning into an error
    assert np.isfinite(act.logits).all()
