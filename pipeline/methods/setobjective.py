"""ALBAT v2's set objective: relevance plus the surrogate's bias-variance risk, chosen greedily.

Propositions 1 and 2 (../shared/ALBAT.md) read together: adding a set S with weight λ (loss
mean_{D_A} ℓ + λ/m Σ_{b∈S} ℓ_b) moves the adaptation optimum (bias) and adds curvature (variance).
Everything is taken in the adaptation's own curvature subspace at the surrogate φ_s:

    H_A = mean_{a∈D_A} g_a g_aᵀ  (empirical Fisher of the adaptation gradients at φ_s)
        = V diag(σ²) Vᵀ, top r directions;   w_b = diag(1/σ) Vᵀ g_b   (`whiten`)

so that H_A = I in these coordinates and a direction H_A does not see cannot change the target loss
(to second order). With c = λ/m, M(S) = I + c Σ_{b∈S} w_b w_bᵀ and s(S) = c Σ_{b∈S} w_b:

    bias      B(S) = ½ ‖M(S)⁻¹ s(S)‖²          excess target loss of the shifted optimum δ = −M⁻¹s
    variance  V(S) = tr(M(S)⁻²) / (2 n_A)       excess target loss of the estimate (Σ_A = H_A)
    risk      R(S) = b·B(S) + v·V(S),  R_0 = r / (2 n_A)  (the risk of S = ∅ with b = v = 1)

and the set objective, to maximise at |S| = m,

    J(S) = Σ_{b∈S} rel_b − β · m · R(S) / R_0

(rel_b: the query stage's cosine of b to its nearest adaptation example; β·m/R_0 puts a risk change
on the scale of one example's relevance). Greedy adds the argmax of the exact marginal gain

    gain_b = rel_b + β·m·(R(S) − R(S ∪ b)) / R_0

computed for every candidate at once by Sherman–Morrison in the eigenbasis M = Q diag(μ) Qᵀ: with
p = Qᵀw, t = Qᵀs, a_k = Σ p²/μ^k, b_k = Σ p·t/μ^k, κ = c/(1 + c·a_1) and α = κ(1 − b_1),

    V(S) − V(S∪b) = (2κ a_3 − κ² a_2²) / (2 n_A)
    B(S) − B(S∪b) = −(α b_2 + ½ α² a_2)

O(N r²) per step. The diminishing returns are in V (a second copy of a direction reduces the
variance less) and B (gradients that pull the same way add up quadratically).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def whiten(adaptation_grads: np.ndarray, candidate_grads: np.ndarray, rank: int,
           rel_tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(w, σ²): candidate gradients in the whitened top-`rank` eigenbasis of H_A = mean g_a g_aᵀ, and
    H_A's eigenvalues there. Directions with σ² ≤ rel_tol·σ²_max are dropped (H_A cannot see them)."""
    A = np.asarray(adaptation_grads, np.float64) / np.sqrt(max(len(adaptation_grads), 1))
    _, sing, vt = np.linalg.svd(A, full_matrices=False)
    keep = sing**2 > rel_tol * (sing[0] ** 2 if len(sing) else 0.0)
    keep[rank:] = False
    sing, vt = sing[keep], vt[keep]
    return (np.asarray(candidate_grads, np.float64) @ vt.T) / sing, sing**2


def set_risk(w: np.ndarray, chosen: np.ndarray, c: float, n_a: int, bias: float = 1.0,
             variance: float = 1.0) -> tuple[float, float]:
    """(B(S), V(S)) of the rows `chosen` of w, by direct inversion (the reference for the greedy)."""
    r = w.shape[1]
    sel = w[np.asarray(chosen, np.int64)]
    M = np.eye(r) + c * sel.T @ sel
    Minv = np.linalg.inv(M)
    s = c * sel.sum(0)
    return bias * 0.5 * float(np.sum((Minv @ s) ** 2)), variance * float(np.trace(Minv @ Minv)) / (2 * n_a)


def objective(rel: np.ndarray, w: np.ndarray, chosen: np.ndarray, c: float, n_a: int, budget: int,
              beta: float, bias: float = 1.0, variance: float = 1.0) -> float:
    """J(S) by direct evaluation."""
    B, V = set_risk(w, chosen, c, n_a, bias, variance)
    r0 = w.shape[1] / (2 * n_a)
    return float(np.sum(rel[np.asarray(chosen, np.int64)])) - beta * budget * (B + V) / r0


@dataclass
class GreedyTrace:
    order: np.ndarray  # rows in selection order
    gain: np.ndarray  # per row: the marginal gain when it was taken (nan: never taken)
    bias_gain: np.ndarray  # β·m·(B(S) − B(S∪b))/R_0 at that step
    variance_gain: np.ndarray  # β·m·(V(S) − V(S∪b))/R_0 at that step
    last_gain: np.ndarray  # per row: its marginal gain at the last step (what it lost to)
    risk: tuple[float, float]  # (B, V) of the final set


def greedy(rel: np.ndarray, w: np.ndarray, budget: int, c: float, n_a: int, beta: float = 1.0,
           bias: float = 1.0, variance: float = 1.0, allowed: np.ndarray | None = None) -> GreedyTrace:
    """Greedy maximisation of J at |S| = budget (module docstring). Ties go to the lower row.

    `allowed` (bool per row) excludes rows before the start."""
    rel = np.asarray(rel, np.float64)
    w = np.asarray(w, np.float64)
    n, r = w.shape
    r0 = r / (2 * n_a) if r else 1.0
    scale = beta * budget / r0
    open_ = np.ones(n, bool) if allowed is None else np.asarray(allowed, bool).copy()
    M, s = np.eye(r), np.zeros(r)
    gain, gain_b, gain_v, last = (np.full(n, np.nan) for _ in range(4))
    order: list[int] = []
    while len(order) < budget and open_.any():
        if r and scale:
            mu, Q = np.linalg.eigh(M)
            P, t = w @ Q, Q.T @ s
            P2 = P * P
            a1, a2, a3 = P2 @ (1 / mu), P2 @ (1 / mu**2), P2 @ (1 / mu**3)
            b1, b2 = P @ (t / mu), P @ (t / mu**2)
            kappa = c / (1 + c * a1)
            alpha = kappa * (1 - b1)
            d_var = variance * (2 * kappa * a3 - kappa**2 * a2**2) / (2 * n_a) * scale
            d_bias = -bias * (alpha * b2 + 0.5 * alpha**2 * a2) * scale
        else:
            d_var = d_bias = np.zeros(n)
        total = np.where(open_, rel + d_bias + d_var, -np.inf)
        j = int(np.argmax(total))  # first maximum: the lower row wins ties
        last[open_] = total[open_]
        gain[j], gain_b[j], gain_v[j] = total[j], d_bias[j], d_var[j]
        order.append(j)
        open_[j] = False
        M += c * np.outer(w[j], w[j])
        s += c * w[j]
    risk = set_risk(w, np.array(order, np.int64), c, n_a, bias, variance) if r else (0.0, 0.0)
    return GreedyTrace(np.array(order, np.int64), gain, gain_b, gain_v, last, risk)
