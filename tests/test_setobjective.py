"""ALBAT v2's set objective (pipeline/methods/setobjective.py): values by hand on tiny sets, the
greedy against brute force, whitening, determinism."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from albat.pipeline.methods.setobjective import greedy, objective, set_risk, whiten


def test_risk_by_hand_one_dimension() -> None:
    # r = 1, w = [2], c = 0.5, n_A = 4: M = 1 + 0.5·4 = 3, s = 1: B = ½(1/3)² = 1/18, V = (1/9)/8 = 1/72
    B, V = set_risk(np.array([[2.0], [5.0]]), np.array([0]), c=0.5, n_a=4)
    assert B == pytest.approx(1 / 18) and V == pytest.approx(1 / 72)
    # the empty set: no bias, V = r/(2 n_A)
    assert set_risk(np.array([[2.0]]), np.array([], np.int64), c=0.5, n_a=4) == pytest.approx((0.0, 1 / 8))


def test_objective_by_hand_two_orthogonal_examples() -> None:
    # w_0 = e_1, w_1 = e_2, c = 1, n_A = 1: M = 2I, s = (1, 1), B = ½·‖s/2‖² = 1/4, V = tr(I/4)/2 = 1/4
    w = np.eye(2)
    rel = np.array([0.5, 0.25])
    assert set_risk(w, np.array([0, 1]), c=1.0, n_a=1) == pytest.approx((0.25, 0.25))
    # J = 0.75 − β·m·(B + V)/R_0 with R_0 = r/(2 n_A) = 1, β = 1, m = 2
    assert objective(rel, w, np.array([0, 1]), c=1.0, n_a=1, budget=2, beta=1.0) == pytest.approx(0.75 - 2 * 0.5)
    # bias switched off: only V counts
    assert objective(rel, w, np.array([0, 1]), 1.0, 1, 2, 1.0, bias=0.0) == pytest.approx(0.75 - 2 * 0.25)


def test_duplicates_have_diminishing_returns() -> None:
    # a second copy of the same direction lowers the variance less than an orthogonal one
    w = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    v_dup = set_risk(w, np.array([0, 1]), 1.0, 1, bias=0.0)[1]
    v_new = set_risk(w, np.array([0, 2]), 1.0, 1, bias=0.0)[1]
    assert v_new < v_dup
    trace = greedy(np.zeros(3), w, 2, 1.0, 1, bias=0.0)
    assert sorted(trace.order.tolist()) == [0, 2]


@pytest.mark.parametrize("beta,bias,variance", [(1.0, 1.0, 1.0), (0.3, 1.0, 0.0), (3.0, 0.0, 1.0), (0.0, 1.0, 1.0)])
def test_greedy_takes_the_exact_marginal_gain_maximiser(beta: float, bias: float, variance: float) -> None:
    rng = np.random.default_rng(7)
    n, r, budget, c, n_a = 10, 3, 5, 0.4, 6
    w, rel = rng.standard_normal((n, r)), rng.uniform(0, 1, n)
    trace = greedy(rel, w, budget, c, n_a, beta, bias, variance)
    chosen: list[int] = []
    for step, j in enumerate(trace.order):
        base = objective(rel, w, np.array(chosen, np.int64), c, n_a, budget, beta, bias, variance)
        gains = np.array([objective(rel, w, np.array(chosen + [b]), c, n_a, budget, beta, bias, variance) - base
                          if b not in chosen else -np.inf for b in range(n)])
        assert j == int(np.argmax(gains)), f"step {step}"
        assert trace.gain[j] == pytest.approx(gains[j], abs=1e-10)
        assert trace.gain[j] == pytest.approx(rel[j] + trace.bias_gain[j] + trace.variance_gain[j])
        chosen.append(int(j))
    assert trace.risk == pytest.approx(set_risk(w, trace.order, c, n_a, bias, variance))


def test_greedy_is_optimal_where_brute_force_says_so_for_one_pick_and_close_for_three() -> None:
    rng = np.random.default_rng(3)
    n, r, c, n_a = 8, 2, 0.5, 4
    w, rel = rng.standard_normal((n, r)), rng.uniform(0, 1, n)
    best1 = max(range(n), key=lambda b: objective(rel, w, np.array([b]), c, n_a, 1, 1.0))
    assert greedy(rel, w, 1, c, n_a).order.tolist() == [best1]
    exact = max(objective(rel, w, np.array(s), c, n_a, 3, 1.0) for s in itertools.combinations(range(n), 3))
    found = objective(rel, w, greedy(rel, w, 3, c, n_a).order, c, n_a, 3, 1.0)
    assert found <= exact + 1e-12 and found >= exact - 0.5  # greedy is a heuristic, but not far off here


def test_zero_beta_is_relevance_order_and_ties_go_to_the_lower_row() -> None:
    rel = np.array([0.1, 0.9, 0.5, 0.9])
    trace = greedy(rel, np.ones((4, 2)), 3, 0.1, 2, beta=0.0)
    assert trace.order.tolist() == [1, 3, 2]
    assert np.isnan(trace.gain[0]) and trace.last_gain[0] == pytest.approx(0.1)


def test_allowed_rows_are_never_taken() -> None:
    rng = np.random.default_rng(0)
    allowed = np.array([True, False, True, True, False, True])
    trace = greedy(rng.uniform(size=6), rng.standard_normal((6, 2)), 4, 0.5, 3, allowed=allowed)
    assert set(trace.order.tolist()) == {0, 2, 3, 5}


def test_whiten_makes_the_adaptation_fisher_the_identity() -> None:
    rng = np.random.default_rng(1)
    A = rng.standard_normal((5, 8))  # rank 5 in 8 dimensions
    w, sigma2 = whiten(A, A, rank=10)
    assert len(sigma2) == 5
    assert np.allclose(w.T @ w / len(A), np.eye(5), atol=1e-10)
    # a direction the adaptation gradients never span is invisible
    null = np.linalg.svd(A)[2][-1]
    assert np.allclose(whiten(A, null[None], rank=10)[0], 0, atol=1e-10)
    assert whiten(A, A, rank=2)[0].shape == (5, 2)


def test_same_inputs_same_choice() -> None:
    rng = np.random.default_rng(5)
    w, rel = rng.standard_normal((50, 4)), rng.uniform(size=50)
    first, second = greedy(rel, w, 20, 0.05, 8), greedy(rel.copy(), w.copy(), 20, 0.05, 8)
    assert first.order.tolist() == second.order.tolist()
    assert np.array_equal(first.gain, second.gain, equal_nan=True)
