"""pipeline.mixture on tiny, hand-checkable inputs: the mixture-of-experts loss, its gradient, the
simplex optimiser against known optima and a brute-force grid, the calibration regression, and the
row weights that emit multiplies by."""
from __future__ import annotations

import math

import numpy as np
import pytest

from albat.pipeline.mixture import (calibrated_weights, dirichlet_mixtures, fit_mixture_weights, mixture_gradient,
                                    mixture_nll, row_multipliers)


def test_the_loss_by_hand() -> None:
    p = np.array([[0.5, 0.1], [0.2, 0.4]])  # expert g's probability of target unit i
    w = np.array([0.25, 0.75])
    by_hand = -(math.log(0.25 * 0.5 + 0.75 * 0.2) + math.log(0.25 * 0.1 + 0.75 * 0.4)) / 2
    assert mixture_nll(np.log(p), w) == pytest.approx(by_hand, rel=1e-12)


def test_a_zero_weight_or_a_zero_probability_is_exact() -> None:
    with np.errstate(divide="ignore"):
        log_lik = np.log(np.array([[0.0, 0.3], [0.6, 0.2]]))  # expert 0 gives unit 0 no mass
    assert mixture_nll(log_lik, np.array([0.0, 1.0])) == pytest.approx(-(math.log(0.6) + math.log(0.2)) / 2)
    assert mixture_nll(log_lik, np.array([1.0, 0.0])) == math.inf


def test_indicator_experts_get_the_share_of_the_units_they_explain() -> None:
    # units 0-4 explained only by expert 0, 5-7 by expert 1, 8-9 by expert 2: the optimum is (.5, .3, .2)
    owner = np.array([0] * 5 + [1] * 3 + [2] * 2)
    log_lik = np.where(np.arange(3)[:, None] == owner[None, :], 0.0, -np.inf)
    w, _ = fit_mixture_weights(log_lik)
    assert w == pytest.approx([0.5, 0.3, 0.2], abs=1e-9)


def test_em_reaches_the_brute_force_minimum() -> None:
    rng = np.random.default_rng(0)
    log_lik = np.log(rng.uniform(0.01, 1.0, size=(2, 40)))
    grid = np.linspace(0, 1, 10001)
    losses = [mixture_nll(log_lik, np.array([a, 1 - a])) for a in grid]
    best = grid[int(np.argmin(losses))]
    w, _ = fit_mixture_weights(log_lik, iterations=20000)
    assert w.sum() == pytest.approx(1.0) and w[0] == pytest.approx(best, abs=2e-3)
    assert mixture_nll(log_lik, w) <= min(losses) + 1e-9


def test_em_never_increases_the_loss() -> None:
    log_lik = np.log(np.random.default_rng(1).uniform(0.01, 1.0, size=(4, 30)))
    losses = [mixture_nll(log_lik, fit_mixture_weights(log_lik, iterations=k, tol=-1.0)[0]) for k in range(1, 30)]
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))


def test_the_gradient_matches_finite_differences() -> None:
    log_lik = np.log(np.random.default_rng(2).uniform(0.05, 1.0, size=(3, 12)))
    w, eps = np.array([0.2, 0.5, 0.3]), 1e-6
    numeric = [(mixture_nll(log_lik, w + eps * e) - mixture_nll(log_lik, w - eps * e)) / (2 * eps) for e in np.eye(3)]
    assert mixture_gradient(log_lik, w) == pytest.approx(numeric, rel=1e-5)


def test_calibration_recovers_a_known_regression_and_its_minimum() -> None:
    log_lik = np.log(np.random.default_rng(3).uniform(0.05, 1.0, size=(3, 50)))
    c = np.array([0.0, 0.4, -0.2])
    true = lambda w: 2.0 + 3.0 * mixture_nll(log_lik, w) + c @ w  # noqa: E731
    tried = dirichlet_mixtures(3, 12, seed=0)
    w, coef = calibrated_weights(log_lik, tried, np.array([true(t) for t in tried]), ridge=1e-9)
    # the intercept and c are identified only up to a constant (sum w = 1): compare what is identified
    assert coef[1] == pytest.approx(3.0, rel=1e-4)
    assert coef[2:] - coef[2] == pytest.approx(c - c[0], abs=1e-4)
    mde_only, _ = fit_mixture_weights(log_lik)
    assert true(w) <= true(mde_only) + 1e-9
    grid = dirichlet_mixtures(3, 4000, seed=1)
    assert true(w) <= min(true(g) for g in grid) + 1e-6


def test_row_multipliers_give_each_group_its_share_and_keep_the_total() -> None:
    groups = np.array([0, 0, 0, 1, 2, 2])
    w_b = np.array([1.0, 1.0, 2.0, 1.0, 0.5, 0.5])
    w = np.array([0.2, 0.5, 0.3])
    mult = row_multipliers(groups, w_b, w)
    weighted = w_b * mult
    assert weighted.sum() == pytest.approx(w_b.sum())
    shares = np.bincount(groups, weights=weighted) / weighted.sum()
    assert shares == pytest.approx(w)
    assert mult[0] == pytest.approx(0.2 * 6.0 / 4.0)  # w_g * total / the group's mass, by hand


def test_an_empty_group_takes_nothing() -> None:
    mult = row_multipliers(np.array([0, 0]), np.ones(2), np.array([0.7, 0.3]))
    assert mult == pytest.approx([0.7, 0.7])  # group 1 has no rows: its 0.3 is not handed out


def test_calibration_mixtures_are_seeded() -> None:
    assert np.array_equal(dirichlet_mixtures(4, 3, seed=5), dirichlet_mixtures(4, 3, seed=5))
    assert not np.array_equal(dirichlet_mixtures(4, 3, seed=5), dirichlet_mixtures(4, 3, seed=6))
    assert dirichlet_mixtures(4, 3, seed=5).sum(axis=1) == pytest.approx(np.ones(3))


def test_bench_mix_lm_reweights_backbone_rows_only() -> None:
    """The LM-track mix benchmark's random mixtures: adaptation rows keep weight 1, the backbone rows'
    total is unchanged, and each group holds its share w_g of it."""
    from benchmarks.bench_mix_lm import mixed_weights

    weights = np.array([1.0, 1.0, 0.25, 0.25, 0.25, 0.25])
    ids = np.array([-1, -2, 10, 11, 12, 13])
    is_adapt = np.array([True, True, False, False, False, False])
    group_of = {10: 0, 11: 0, 12: 0, 13: 1}
    out = mixed_weights(weights, ids, is_adapt, group_of, np.array([0.25, 0.75]))
    np.testing.assert_allclose(out[:2], [1.0, 1.0])
    assert out[2:].sum() == pytest.approx(1.0)
    np.testing.assert_allclose([out[2:5].sum(), out[5]], [0.25, 0.75])
