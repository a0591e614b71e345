"""Mixture weights of a selection's groups by Mixtures of Data Experts (Belenki et al., 2025): pure
functions of arrays.

One expert per group g is trained on that group's selected rows alone. `log_lik[g, i]` is
log p_g(y_i | x_i), expert g's log-likelihood of held-out target unit i (a token of an adaptation
text for the `lm` surrogate, an adaptation pair for the contrastive one). The loss of a model
trained on the w-weighted mixture of the groups is approximated by the loss of the w-weighted
mixture of the experts' predictive distributions:

    L(w) = -(1/N) sum_i log sum_g w_g p_g(y_i | x_i),      w on the simplex.

L is convex in w (minus the log of a linear function), so its minimum is global; the EM update

    r_gi = w_g p_gi / sum_h w_h p_hi,        w_g <- (1/N) sum_i r_gi

never increases L and converges to it (the classic update of mixture proportions with fixed
components). Optionally (the paper's refinement) a few real mixture runs calibrate a regression
L_real(w) ~ a + b L(w) + c.w, whose minimum over the simplex is then taken instead.
"""
from __future__ import annotations

import numpy as np


def _log_mix(log_lik: np.ndarray, w: np.ndarray) -> np.ndarray:
    """log sum_g w_g p_gi for each unit i (log-sum-exp; a zero weight drops its expert)."""
    with np.errstate(divide="ignore"):  # log 0 = -inf is exact here: that expert adds nothing
        terms = np.log(np.asarray(w, dtype=np.float64))[:, None] + log_lik
        top = terms.max(axis=0)
        top = np.where(np.isfinite(top), top, 0.0)
        return top + np.log(np.exp(terms - top).sum(axis=0))


def mixture_nll(log_lik: np.ndarray, w: np.ndarray) -> float:
    """L(w): the mean negative log-likelihood of the target units under the w-mixture of the experts."""
    return float(-_log_mix(np.asarray(log_lik, dtype=np.float64), w).mean())


def mixture_gradient(log_lik: np.ndarray, w: np.ndarray) -> np.ndarray:
    """dL/dw_g = -(1/N) sum_i p_gi / sum_h w_h p_hi."""
    log_lik = np.asarray(log_lik, dtype=np.float64)
    return -np.exp(log_lik - _log_mix(log_lik, w)[None, :]).mean(axis=1)


def fit_mixture_weights(log_lik: np.ndarray, iterations: int = 1000, tol: float = 1e-12) -> tuple[np.ndarray, int]:
    """argmin_w L(w) on the simplex by EM from the uniform mixture; returns (w, iterations run).
    Stops when L improves by less than `tol`."""
    log_lik = np.asarray(log_lik, dtype=np.float64)
    groups = log_lik.shape[0]
    w = np.full(groups, 1.0 / groups)
    loss = mixture_nll(log_lik, w)
    for step in range(1, iterations + 1):
        w = np.exp(np.log(np.maximum(w, 1e-300))[:, None] + log_lik - _log_mix(log_lik, w)[None, :]).mean(axis=1)
        w = w / w.sum()
        new = mixture_nll(log_lik, w)
        if loss - new < tol:
            return w, step
        loss = new
    return w, iterations


def calibrated_weights(log_lik: np.ndarray, tried: np.ndarray, measured: np.ndarray, ridge: float = 1e-3,
                       iterations: int = 2000, step: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The paper's refinement: fit measured losses of real runs at mixtures `tried` (R, G) by ridge
    regression on the features [1, L(w), w], then minimise the fitted loss over the simplex by
    exponentiated gradient from the MDE optimum. Returns (w, coefficients [a, b, c_1..c_G])."""
    tried, measured = np.asarray(tried, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    features = np.column_stack([np.ones(len(tried)), [mixture_nll(log_lik, w) for w in tried], tried])
    penalty = ridge * np.eye(features.shape[1])
    penalty[0, 0] = 0.0  # the intercept is not shrunk
    coef = np.linalg.solve(features.T @ features + penalty, features.T @ measured)
    b, c = coef[1], coef[2:]
    w, _ = fit_mixture_weights(log_lik)
    for _ in range(iterations):
        grad = b * mixture_gradient(log_lik, w) + c
        w = w * np.exp(-step * (grad - grad.min()))
        w = w / w.sum()
    return w, coef


def row_multipliers(groups: np.ndarray, w_b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per selected row, the factor its weight is multiplied by so that group g holds the share w_g
    of the total, and the total stays what it was:  sum_r w_b,r * mult_r = sum_r w_b,r.

        mult_r = w_g(r) * (sum_all w_b) / (sum_{s in g(r)} w_b,s)
    """
    groups, w_b = np.asarray(groups), np.asarray(w_b, dtype=np.float64)
    mass = np.bincount(groups, weights=w_b, minlength=len(w))
    total = w_b.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        per_group = np.where(mass > 0, np.asarray(w, dtype=np.float64) * total / mass, 0.0)
    return per_group[groups]


def dirichlet_mixtures(groups: int, count: int, seed: int) -> np.ndarray:
    """`count` seeded mixtures for calibration runs: the vertices' midpoints would favour no group,
    so draw from a flat Dirichlet."""
    return np.random.default_rng([seed, 29]).dirichlet(np.ones(groups), size=count)
