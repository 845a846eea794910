"""The b-matching solvers: constraints, optimality (brute force, exact vs fast), infeasibility."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe.errors import InfeasibleAssignmentError
from moe.matching.solvers import (
    assignment_violations,
    check_assignment,
    check_feasible,
    dual_bound,
    objective,
    solve,
    solve_exact,
    solve_fast,
)
from moe.matching.solvers import fast as fast_solver

Instance = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def brute_force(
    scores: np.ndarray, cap: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> float | None:
    """Best objective over every 0/1 matrix (None when none is feasible)."""
    c, e = scores.shape
    best: float | None = None
    for bits in itertools.product((False, True), repeat=c * e):
        x = np.array(bits).reshape(c, e)
        if assignment_violations(x, cap, lower, upper):
            continue
        v = objective(scores, x)
        best = v if best is None else max(best, v)
    return best


def skewed(c: int, e: int, seed: int, *, slack: float = 1.2, floor: int = 1) -> Instance:
    """Affinity-like scores where a few experts are wanted by most clients."""
    rng = np.random.default_rng(seed)
    popularity = rng.dirichlet(np.full(e, 0.5)) * e
    a = rng.dirichlet(0.3 * popularity + 0.05, size=c)
    a /= a.max(axis=1, keepdims=True)
    scores = 0.6 * a + 0.2 * rng.random((c, e)) + 0.1 * rng.random((c, 1)) - 0.05
    cap = rng.integers(1, 4, size=c)
    upper = np.full(e, int(np.ceil(slack * cap.sum() / e)))
    return scores, cap, np.full(e, floor), upper


def tiny(seed: int) -> Instance:
    rng = np.random.default_rng(seed)
    c, e = int(rng.integers(1, 5)), int(rng.integers(1, 4))
    while c * e > 12:
        c -= 1
    scores = np.round(rng.normal(0.2, 1.0, size=(c, e)), 2)
    cap = rng.integers(0, e + 1, size=c)
    lower = rng.integers(0, 2, size=e)
    upper = lower + rng.integers(0, c + 1, size=e)
    return scores, cap, lower, upper


@pytest.mark.parametrize("seed", range(60))
def test_exact_matches_brute_force(seed: int) -> None:
    scores, cap, lower, upper = tiny(seed)
    best = brute_force(scores, cap, lower, upper)
    if best is None:
        with pytest.raises(InfeasibleAssignmentError):
            solve_exact(scores, cap, lower, upper)
        with pytest.raises(InfeasibleAssignmentError):
            solve_fast(scores, cap, lower, upper)
        return
    for solver in (solve_exact, solve_fast):
        x = solver(scores, cap, lower, upper)
        check_assignment(x, cap, lower, upper)
        if solver is solve_exact:
            assert objective(scores, x) == pytest.approx(best, abs=1e-9)
        else:
            assert objective(scores, x) <= best + 1e-9


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    c=st.integers(1, 40),
    e=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    negative=st.booleans(),
    tight=st.booleans(),
)
def test_constraints_always_hold(c: int, e: int, seed: int, negative: bool, tight: bool) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.normal(0.0 if negative else 0.5, 0.5, size=(c, e))
    if not negative:
        scores = np.abs(scores)
    cap = rng.integers(0, 4, size=c)
    lower = rng.integers(0, 3, size=e)
    upper = lower + rng.integers(0, 2 if tight else c + 1, size=e)
    try:
        check_feasible(cap, lower, upper)
    except InfeasibleAssignmentError:
        for solver in (solve_exact, solve_fast):
            with pytest.raises(InfeasibleAssignmentError):
                solver(scores, cap, lower, upper)
        return
    xe = solve_exact(scores, cap, lower, upper)
    xf = solve_fast(scores, cap, lower, upper)
    check_assignment(xe, cap, lower, upper)
    check_assignment(xf, cap, lower, upper)
    assert xe.dtype == np.bool_
    assert xf.dtype == np.bool_
    assert objective(scores, xf) <= objective(scores, xe) + 1e-7


@pytest.mark.parametrize(
    ("c", "e", "seed", "slack"),
    [(400, 16, 0, 1.2), (1000, 64, 1, 1.2), (300, 128, 2, 1.5), (800, 32, 3, 1.0), (600, 48, 4, 3)],
)
def test_fast_within_one_percent_of_exact(
    c: int, e: int, seed: int, slack: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    scores, cap, lower, upper = skewed(c, e, seed, slack=slack)
    xe = solve_exact(scores, cap, lower, upper)
    # The fast path must get there on its own, not through its exact fallback.
    monkeypatch.setattr(fast_solver, "solve_exact", None)
    xf = solve_fast(scores, cap, lower, upper)
    check_assignment(xe, cap, lower, upper)
    check_assignment(xf, cap, lower, upper)
    exact, fast = objective(scores, xe), objective(scores, xf)
    assert fast <= exact + 1e-7
    assert fast >= exact - 0.01 * abs(exact)


def test_fast_within_one_percent_with_negative_scores_and_floors() -> None:
    rng = np.random.default_rng(7)
    c, e = 500, 40
    scores = rng.normal(0.0, 1.0, size=(c, e))
    cap = rng.integers(1, 4, size=c)
    lower = rng.integers(0, 5, size=e)
    upper = lower + 20
    xe = solve_exact(scores, cap, lower, upper)
    xf = solve_fast(scores, cap, lower, upper)
    check_assignment(xf, cap, lower, upper)
    exact, fast = objective(scores, xe), objective(scores, xf)
    assert fast >= exact - 0.01 * abs(exact)
    # Capacity stays unused only for non-positive pairs (the floors aside).
    assert (scores[xe & (scores <= 0)].size) <= lower.sum()


def test_capacity_filled_when_scores_are_positive() -> None:
    scores, cap, lower, upper = skewed(300, 16, 5, slack=2.0)
    for solver in (solve_exact, solve_fast):
        x = solver(scores, np.minimum(cap, 16), lower, upper)
        assert (x.sum(axis=1) == cap).all()


def test_negative_pairs_are_left_out() -> None:
    scores = np.array([[1.0, -1.0, 0.5], [-0.5, -0.1, -2.0]])
    cap = np.array([3, 2])
    for solver in (solve_exact, solve_fast):
        x = solver(scores, cap, np.zeros(3), np.full(3, 2))
        assert x.tolist() == [[True, False, True], [False, False, False]]
        # A floor forces the least bad pair in.
        x = solver(scores, cap, np.array([0, 2, 0]), np.full(3, 2))
        assert x[:, 1].tolist() == [True, True]
        check_assignment(x, cap, [0, 2, 0], [2, 2, 2])


@pytest.mark.parametrize(
    ("cap", "lower", "upper", "match"),
    [
        ([1, 1], [2, 0], [1, 2], "at least 2 clients but may take at most 1"),
        ([1, 1], [3, 0], [5, 5], "at most 2 .*2 clients"),
        ([1, 0, 0], [1, 1], [3, 3], "need 2 client slots in total but the clients offer only 1"),
        ([0, 0], [1], [2], "only 0 clients have any capacity"),
        ([3, 1, 1], [3, 2, 0], [3, 3, 3], "2 most demanding experts need 5 .* only 4"),
    ],
)
def test_infeasible_with_a_clear_message(
    cap: list[int], lower: list[int], upper: list[int], match: str
) -> None:
    scores = np.ones((len(cap), len(lower)))
    with pytest.raises(InfeasibleAssignmentError, match=match):
        check_feasible(cap, lower, upper)
    for solver in (solve_exact, solve_fast):
        with pytest.raises(InfeasibleAssignmentError, match=match):
            solver(scores, cap, lower, upper)


def test_malformed_input() -> None:
    with pytest.raises(ValueError, match="finite"):
        solve_exact(np.array([[np.nan]]), [1], [0], [1])
    with pytest.raises(ValueError, match="cap must have shape"):
        solve_fast(np.ones((2, 2)), [1], [0, 0], [1, 1])
    with pytest.raises(ValueError, match=">= 0"):
        solve_fast(np.ones((1, 1)), [-1], [0], [1])
    with pytest.raises(ValueError, match="method"):
        solve(np.ones((1, 1)), [1], [0], [1], method="magic")  # type: ignore[arg-type]


def test_empty_fleet() -> None:
    for solver in (solve_exact, solve_fast):
        assert solver(np.zeros((0, 3)), np.zeros(0, dtype=int), [0] * 3, [0] * 3).shape == (0, 3)


def test_check_assignment_reports_violations() -> None:
    x = np.array([[1, 1], [1, 0]], dtype=bool)
    problems = assignment_violations(x, [1, 1], [0, 1], [1, 2])
    assert "client 0 has 2 experts, capacity 1" in problems
    assert "expert 0 has 2 clients, upper bound 1" in problems
    assert "expert 1 has 1 clients, lower bound 1" not in problems
    with pytest.raises(ValueError, match="invalid assignment"):
        check_assignment(x, [1, 1], [0, 1], [1, 2])
    assert assignment_violations(np.zeros((1, 1)), [1, 1], [0], [1])[0].startswith("shape")
    check_assignment(np.array([[0, 1], [1, 0]]), [1, 1], [1, 1], [1, 1])


def test_auto_agrees_with_exact_on_small_problems() -> None:
    scores, cap, lower, upper = skewed(200, 8, 9)
    auto = solve(scores, cap, lower, upper)
    exact = solve_exact(scores, cap, lower, upper)
    assert objective(scores, auto) == pytest.approx(objective(scores, exact))


def test_solvers_are_deterministic() -> None:
    scores, cap, lower, upper = skewed(500, 32, 11)
    for solver in (solve_exact, solve_fast):
        a = solver(scores, cap, lower, upper)
        b = solver(scores, cap, lower, upper)
        assert (a == b).all()


def test_ties_do_not_break_the_fast_path() -> None:
    # Many equal scores (new clients without a histogram look alike).
    scores = np.zeros((300, 20))
    scores[:, :3] = 1.0
    cap = np.full(300, 2)
    lower = np.ones(20, dtype=int)
    upper = np.full(20, 40)
    xe = solve_exact(scores, cap, lower, upper)
    xf = solve_fast(scores, cap, lower, upper)
    check_assignment(xf, cap, lower, upper)
    assert objective(scores, xf) == pytest.approx(objective(scores, xe))


@pytest.mark.parametrize(
    ("kwargs", "tolerance"),
    [
        ({"sample": 40}, 0.01),
        ({"warm": 0.0}, 0.01),
        ({"pad": 1}, 0.01),
        ({"tail": 0.0, "eps": 1e-4}, 0.01),
        # Without price discovery the candidates are each client's best by raw score, which
        # is what fails when many clients want the same experts: valid, but further off.
        ({"sample": 0}, 0.05),
    ],
    ids=["refined-prices", "cold", "narrow", "strict", "no-prices"],
)
def test_fast_variants_stay_valid_and_close(kwargs: dict[str, float], tolerance: float) -> None:
    scores, cap, lower, upper = skewed(1500, 48, 12)
    lower = lower.copy()
    lower[:8] = 20  # a few heavy floors, so subsidies and the repair both run
    exact = objective(scores, solve_exact(scores, cap, lower, upper))
    x = solve_fast(scores, cap, lower, upper, **kwargs)  # type: ignore[arg-type]
    check_assignment(x, cap, lower, upper)
    assert objective(scores, x) >= exact - tolerance * abs(exact)


@pytest.mark.parametrize("seed", range(6))
def test_dual_bound_is_an_upper_bound(seed: int) -> None:
    scores, cap, lower, upper = skewed(300, 24, seed)
    if seed % 2:
        scores = scores - 0.3  # some negative pairs
        lower = lower + 2
    best = objective(scores, solve_exact(scores, cap, lower, upper))
    bound = dual_bound(scores, cap, lower, upper)
    assert bound >= best - 1e-7
    assert bound <= best + 0.01 * abs(best)  # the discovered prices are close to optimal
    rng = np.random.default_rng(seed)
    anything = rng.normal(0.0, 0.3, size=24)
    assert dual_bound(scores, cap, lower, upper, anything) >= best - 1e-7
    with pytest.raises(ValueError, match="price"):
        dual_bound(scores, cap, lower, upper, np.zeros(3))
