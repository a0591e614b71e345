"""The ALBAT proposition filter and the gradient-alignment score, on hand-checkable inputs."""
from __future__ import annotations

import numpy as np
import pytest

from albat.pipeline.methods.albat import BUDGET, INVALID_GRADIENT, INVALID_LOSS, KEPT, explain, proposition_filter, set_drift
from albat.pipeline.methods.gradalign import gradient_alignment
from albat.pipeline.methods.ranked import top_scores


def test_validity_by_loss_rejects_examples_adaptation_makes_worse():
    delta = np.array([-0.5, 0.2, 0.0, 0.01])
    grads = np.zeros((4, 2))
    decision = proposition_filter(delta, grads, np.array([1.0, 9.0, 2.0, 3.0]), bound=1.0, tau=0.0, budget=10)
    assert decision.status.tolist() == [KEPT, INVALID_LOSS, KEPT, INVALID_LOSS]
    # kept in curvature order among the valid: row 2 (curvature 2) before row 0 (curvature 1)
    assert decision.order.tolist() == [2, 0]
    assert proposition_filter(delta, grads, np.ones(4), bound=1.0, tau=0.1, budget=10).status[3] == KEPT


def test_greedy_mean_gradient_bound_by_hand():
    # curvature order: rows 0, 1, 2, 3. Mean gradients as rows are tried:
    #   {0}: ‖(1,0)‖ = 1 ≤ 1 keep; {0,1}: ‖(0,0)‖/2 = 0 keep; {0,1,2}: ‖(0,5)‖/3 = 1.667 > 1 reject;
    #   {0,1,3}: ‖(0,2)‖/3 = 0.667 keep
    grads = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 5.0], [0.0, 2.0]])
    decision = proposition_filter(np.zeros(4), grads, np.array([4.0, 3.0, 2.0, 1.0]), bound=1.0, tau=0.0, budget=10)
    assert decision.order.tolist() == [0, 1, 3]
    assert decision.status.tolist() == [KEPT, KEPT, INVALID_GRADIENT, KEPT]
    np.testing.assert_allclose(decision.mean_grad_norm, [1.0, 0.0, 5 / 3, 2 / 3])


def test_pairwise_drift_is_the_mean_of_pairwise_inner_products():
    g = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    pairs = [g[i] @ g[j] for i in range(3) for j in range(3) if i != j]
    assert set_drift(g.sum(0), float((g * g).sum()), 3, pairwise=True) == pytest.approx(np.sqrt(np.mean(pairs)))
    assert set_drift(g[:1].sum(0), float(g[0] @ g[0]), 1, pairwise=True) == 0.0
    assert set_drift(g.sum(0), float((g * g).sum()), 3, pairwise=False) == pytest.approx(np.linalg.norm(g.mean(0)))
    # a shared direction survives, zero-mean noise does not: 400 gradients u + noise of norm 10
    rng = np.random.default_rng(0)
    u = np.array([1.0, 0.0, 0.0, 0.0])
    noisy = u + 10 * rng.standard_normal((400, 4)) / 2
    drift = set_drift(noisy.sum(0), float((noisy * noisy).sum()), 400, pairwise=True)
    assert abs(drift - 1.0) < 0.35 and np.linalg.norm(noisy.mean(0)) > drift


def test_pairwise_bound_admits_noisy_examples_without_a_common_direction():
    """Per-example gradients much larger than the bound: the mean norm of a small set rejects all of
    them; the pairwise drift keeps opposite ones and rejects a set that shares a direction."""
    # by hand: rows 0-3 cancel (drift 0); row 4 alone among them still has no partner (pairs sum to 0 + the
    # negative ones); a second [20, 20] makes (‖(40,40)‖² − 2000) / (6·5) = 40, drift 6.3 > 1: rejected, twice
    grads = np.array([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0], [20.0, 20.0], [20.0, 20.0], [20.0, 20.0]])
    curvature = np.arange(7, 0, -1).astype(float)
    plain = proposition_filter(np.zeros(7), grads, curvature, bound=1.0, tau=np.inf, budget=10)
    assert plain.order.tolist() == []
    pairwise = proposition_filter(np.zeros(7), grads, curvature, bound=1.0, tau=np.inf, budget=10, pairwise=True)
    assert pairwise.order.tolist() == [0, 1, 2, 3, 4]
    assert pairwise.status[5] == INVALID_GRADIENT and pairwise.status[6] == INVALID_GRADIENT
    assert pairwise.mean_grad_norm[5] == pytest.approx(np.sqrt(40.0))


def test_budget_stops_the_scan_and_ties_go_to_the_lower_row():
    decision = proposition_filter(np.zeros(4), np.zeros((4, 3)), np.array([1.0, 2.0, 2.0, 0.5]), bound=0.0,
                                  tau=0.0, budget=2)
    assert decision.order.tolist() == [1, 2]
    assert decision.status.tolist() == [BUDGET, KEPT, KEPT, BUDGET]
    assert np.isnan(decision.mean_grad_norm[[0, 3]]).all()


def test_reasons_name_the_test_and_its_value():
    assert explain(INVALID_LOSS, 0.25, np.nan, 1.0, 0.0, 2.0).startswith("rejected: validity, Δℓ=+0.2500 > τ=0")
    assert "3.5 > ε·‖ḡ_A‖=2" in explain(INVALID_GRADIENT, -0.1, 3.5, 1.0, 0.0, 2.0)
    assert explain(KEPT, -0.1, 1.5, 7.0, 0.0, 2.0).startswith("kept: Δℓ=-0.1000 ≤ τ=0, curvature 7")
    assert explain(BUDGET, -0.1, np.nan, 0.25, 0.0, 2.0) == "rejected: budget filled before its curvature 0.25"


def test_gradient_alignment_by_hand():
    grads = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(gradient_alignment(grads, np.array([2.0, 0.0])), [1, 0, -1, 0, 1 / np.sqrt(2)])
    assert gradient_alignment(grads, np.zeros(2)).tolist() == [0.0] * 5


def test_top_scores_break_ties_by_id():
    order = top_scores(np.array([0.5, 0.9, 0.5, 0.1]), np.array([30, 10, 20, 40]), 3)
    assert order.tolist() == [1, 2, 0]


@pytest.mark.parametrize("budget", [0, 1, 3])
def test_filter_never_exceeds_the_budget(budget):
    rng = np.random.default_rng(0)
    decision = proposition_filter(rng.normal(size=20), rng.normal(size=(20, 4)), rng.random(20), bound=5.0,
                                  tau=0.0, budget=budget)
    assert len(decision.order) <= budget
    assert set(decision.order) == set(np.nonzero(decision.status == KEPT)[0])


def test_default_tau_leaves_validity_to_the_set_bound():
    from albat.pipeline.methods.base import get_method

    tau = get_method("albat").options["tau"]
    assert tau == float("inf")
    decision = proposition_filter(np.array([0.3, -0.2]), np.zeros((2, 2)), np.array([2.0, 1.0]), bound=1.0,
                                  tau=tau, budget=5)
    assert decision.order.tolist() == [0, 1]
