"""Local training, routing histogram, evaluation and the centralized reference."""

from __future__ import annotations

import numpy as np
import pytest

from moe import training
from moe.data import FederatedData, make_regime
from moe.model import MoEConfig, StackedParams, forward, init_weights, stack_parts
from moe.parts import check_part, model_layout
from moe.training import (
    evaluate,
    lr_scales,
    routing_histogram,
    single_threaded_blas,
    train_centralized,
    train_local,
)


@pytest.fixture(scope="module")
def regime() -> FederatedData:
    return make_regime("label-skew", 10, seed=0, alpha=0.5)


def _copy(parts: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    return {p: {n: a.copy() for n, a in t.items()} for p, t in parts.items()}


def test_only_shared_and_assigned_experts_change(regime: FederatedData) -> None:
    config = MoEConfig()
    start = init_weights(config, 0)
    before = _copy(start)
    device = regime.devices[0]
    result = train_local(config, start, device.x, device.y, [6, 1], seed=0, epochs=2)
    assert set(result.parts) == {"shared", "expert-1", "expert-6"}
    layout = model_layout(config)
    for pid, tensors in result.parts.items():
        check_part(pid, dict(tensors), layout)
        for name, arr in tensors.items():
            assert not np.array_equal(arr, before[pid][name]), (pid, name)
    # The global weights handed in are never written (unassigned parts included).
    for pid, tensors in start.items():
        for name, arr in tensors.items():
            np.testing.assert_array_equal(arr, before[pid][name])
    assert result.num_samples == device.num_samples
    assert result.steps == 2 * -(-device.num_samples // 16)


def test_one_assigned_expert_with_top1_trains_its_gate_row(regime: FederatedData) -> None:
    config = MoEConfig(top_k=1)
    start = init_weights(config, 1)
    device = regime.devices[1]
    result = train_local(config, start, device.x, device.y, [3], seed=0)
    trained = result.parts["expert-3"]
    assert not np.array_equal(trained["gate.weight"], start["expert-3"]["gate.weight"])
    assert not np.array_equal(trained["gate.bias"], start["expert-3"]["gate.bias"])
    assert result.expert_samples == {3: device.num_samples}


def test_routing_statistics_under_the_masked_gate(regime: FederatedData) -> None:
    config = MoEConfig(top_k=2)
    device = regime.devices[2]
    n = device.num_samples
    start = init_weights(config, 2)
    three = train_local(config, start, device.x, device.y, [0, 4, 7], seed=1)
    assert set(three.expert_samples) == {0, 4, 7}
    assert sum(three.expert_samples.values()) == 2 * n  # every sample picks 2 of the 3
    assert set(three.expert_loss) == {e for e, c in three.expert_samples.items() if c}
    assert all(v >= 0 for v in three.expert_loss.values())
    two = train_local(config, start, device.x, device.y, [2, 5], seed=1)
    # k' = min(k, assigned) = 2: every expert sees every sample, so each expert's mean loss
    # is the overall loss.
    assert two.expert_samples == {2: n, 5: n}
    for loss in two.expert_loss.values():
        assert loss == pytest.approx(two.train_loss, rel=1e-5)


def test_training_is_deterministic_per_seed(regime: FederatedData) -> None:
    config = MoEConfig()
    start = init_weights(config, 0)
    device = regime.devices[3]

    def run(seed: int) -> np.ndarray:
        r = train_local(config, start, device.x, device.y, [2, 3], seed=seed)
        return r.parts["expert-2"]["fc1.weight"]

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_local_training_lowers_the_local_loss(regime: FederatedData) -> None:
    config = MoEConfig()
    start = init_weights(config, 0)
    device = regime.devices[4]
    untrained = train_local(config, start, device.x, device.y, [1, 2], seed=0, epochs=0)
    assert untrained.steps == 0
    trained = train_local(config, start, device.x, device.y, [1, 2], seed=0, epochs=5)
    assert trained.train_loss < 0.5 * untrained.train_loss


def test_momentum_is_supported_and_arguments_are_checked(regime: FederatedData) -> None:
    config = MoEConfig()
    start = init_weights(config, 0)
    d = regime.devices[5]
    r = train_local(config, start, d.x, d.y, [0], seed=0, momentum=0.9, lr=0.05)
    assert np.isfinite(r.train_loss)
    bad_calls = [
        ({"assigned_experts": []}, "empty"),
        ({"assigned_experts": [1, 1]}, "repeat"),
        ({"assigned_experts": [8]}, "outside"),
        ({"y": d.y + 10}, "labels"),
        ({"x": d.x[:, :10]}, "x must be"),
        ({"lr": 0.0}, "lr > 0"),
    ]
    for change, message in bad_calls:
        kwargs = {"x": d.x, "y": d.y, "assigned_experts": [0], **change}
        with pytest.raises(ValueError, match=message):
            train_local(config, start, seed=0, **kwargs)  # type: ignore[arg-type]


def test_routing_histogram_counts_global_topk_membership(regime: FederatedData) -> None:
    config = MoEConfig(top_k=2)
    parts = init_weights(config, 3)
    x = regime.devices[6].x
    hist = routing_histogram(config, parts, x)
    assert hist.shape == (8,)
    assert hist.sum() == pytest.approx(1.0)
    selected = forward(stack_parts(parts, range(8)), x, 2).selected
    assert selected is not None
    np.testing.assert_allclose(hist, selected.sum(0) / (2 * len(x)))
    assert not routing_histogram(config, parts, x[:0]).any()


def test_evaluate_reports_accuracy_and_loss(regime: FederatedData) -> None:
    config = MoEConfig()
    parts = init_weights(config, 0)
    acc, loss = evaluate(config, parts, regime.test_x, regime.test_y)
    assert 0.0 <= acc <= 0.3  # untrained: about chance
    assert loss == pytest.approx(np.log(10), rel=0.2)
    assert evaluate(config, parts, regime.test_x[:0], regime.test_y[:0]) == (0.0, 0.0)


def test_batched_evaluation_equals_unbatched(regime: FederatedData) -> None:
    config = MoEConfig()
    parts = train_centralized(config, *regime.pooled(), epochs=3, seed=0)
    acc, loss = evaluate(config, parts, regime.test_x, regime.test_y)
    assert acc > 0.5  # trained: a result worth comparing
    for rows in (1, 16, 64):
        batched = evaluate(config, parts, regime.test_x, regime.test_y, block_rows=rows)
        assert batched[0] == acc
        assert batched[1] == pytest.approx(loss, rel=1e-6)


def test_statistics_passes_in_blocks_give_the_same_result(
    regime: FederatedData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The passes before and after local training run `forward` in sample blocks when the
    dense activations would be large (the large preset's centralized reference): same result."""
    config = MoEConfig()
    device = regime.devices[3]
    start = init_weights(config, 1)
    whole = train_local(config, start, device.x, device.y, [0, 2, 5], seed=4)
    monkeypatch.setattr(training, "STATS_BLOCK_ELEMENTS", 3 * 64 * 5)  # 5 samples a block
    blocked = train_local(config, start, device.x, device.y, [0, 2, 5], seed=4)
    assert blocked.expert_samples == whole.expert_samples
    assert blocked.train_loss == pytest.approx(whole.train_loss, rel=1e-6)
    assert blocked.initial_loss == pytest.approx(whole.initial_loss, rel=1e-6)
    for e, loss in whole.expert_loss.items():
        assert blocked.expert_loss[e] == pytest.approx(loss, rel=1e-6)


def test_centralized_training_reaches_the_target_on_digits(regime: FederatedData) -> None:
    config = MoEConfig()
    x, y = regime.pooled()
    parts = train_centralized(config, x, y, epochs=15, seed=0)
    acc, _ = evaluate(config, parts, regime.test_x, regime.test_y)
    assert acc > 0.9


def test_single_threaded_blas_limits_and_restores() -> None:
    from threadpoolctl import threadpool_info

    def blas_threads() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    with single_threaded_blas():
        assert all(n == 1 for n in blas_threads())
    assert blas_threads() == before


def test_routing_histogram_needs_only_the_gate_rows(regime: FederatedData) -> None:
    config = MoEConfig()
    parts = init_weights(config, 3)
    gate_only = {
        pid: ({k: t[k] for k in ("gate.weight", "gate.bias")} if pid != "shared" else t)
        for pid, t in parts.items()
    }
    x = regime.devices[0].x
    np.testing.assert_array_equal(
        routing_histogram(config, gate_only, x), routing_histogram(config, parts, x)
    )


def test_only_the_output_weights_of_experts_wider_than_64_step_at_a_scaled_rate() -> None:
    assert lr_scales(64) == (1.0,) * len(StackedParams._fields)
    assert lr_scales(16) == (1.0,) * len(StackedParams._fields)
    wide = dict(zip(StackedParams._fields, lr_scales(16384), strict=True))
    assert wide.pop("w2") == 64 / 16384
    assert set(wide.values()) == {1.0}
