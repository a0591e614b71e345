"""A determinantal point process over the retrieved pool (ALBAT `objective=dpp`).

The k-DPP with kernel L = diag(q)·(X Xᵀ + εI)·diag(q) scores a set S by det(L_S): the quality of its
rows (q_b = exp(rel_b / 2T), rel_b the cosine to the nearest adaptation example, so log det L_S =
Σ_{b∈S} rel_b / T + log det(X_S X_Sᵀ + εI)) times the volume its unit vectors span, which collapses for
near-duplicates. Read through the propositions: quality keeps the set near the target (validity),
and the volume is the log-det of the added second-moment matrix of the rows (D-optimal design with
the embedding as the feature: curvature in new directions counts, the same direction twice does not).

MAP inference is NP-hard; the greedy adds the row with the largest marginal gain
log det L_{S∪b} − log det L_S = log d_b², d_b² the squared residual of b's row of L after projecting
out the chosen rows, kept for every row at once by an incremental Cholesky factor (Chen, Zhang and
Zhou, 2018): O(N·m) memory and O(N·m) work per step. Ties go to the lower row index. Pure: arrays in,
arrays out; `log_det` is the reference the tests compare the gains with.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def quality(relevance: np.ndarray, temperature: float) -> np.ndarray:
    """q_b = exp((rel_b − max rel) / 2T): log det L_S = Σ rel/T + log det(K_S) + a constant per |S|."""
    rel = np.asarray(relevance, np.float64)
    return np.exp((rel - rel.max()) / (2 * temperature)) if len(rel) else rel


@dataclass
class DppTrace:
    order: np.ndarray  # chosen rows, in order
    gain: np.ndarray  # log d_b² when b was taken (nan if never taken)
    last_gain: np.ndarray  # every row's log d_b² against the final set (−inf: already spanned)


def greedy_map(vectors: np.ndarray, q: np.ndarray, budget: int, epsilon: float = 1e-3,
               allowed: np.ndarray | None = None) -> DppTrace:
    """Greedy MAP of the k-DPP with L = diag(q)(X Xᵀ + εI)diag(q) over the rows of `vectors`."""
    x = np.asarray(vectors, np.float64)
    q = np.asarray(q, np.float64)
    n = len(x)
    allowed = np.ones(n, bool) if allowed is None else np.asarray(allowed, bool)
    budget = min(budget, int(allowed.sum()))
    diag = q**2 * (np.einsum("ij,ij->i", x, x) + epsilon)  # L_bb
    d2 = diag.copy()
    factor = np.zeros((n, max(budget, 1)))
    taken = np.full(n, np.nan)
    open_rows = allowed.copy()
    order: list[int] = []
    for t in range(budget):
        score = np.where(open_rows, d2, -np.inf)
        b = int(np.argmax(score))
        if not open_rows[b] or d2[b] <= 0:
            break
        order.append(b)
        taken[b] = np.log(d2[b])
        open_rows[b] = False
        row = q * q[b] * (x @ x[b])  # L[:, b]
        row[b] += q[b] ** 2 * epsilon
        e = (row - factor[:, :t] @ factor[b, :t]) / np.sqrt(d2[b])
        factor[:, t] = e
        d2 = np.maximum(d2 - e**2, 0.0)
    with np.errstate(divide="ignore"):
        last = np.where(d2 > 0, np.log(np.maximum(d2, 1e-300)), -np.inf)
    return DppTrace(order=np.asarray(order, np.int64), gain=taken, last_gain=last)


def log_det(vectors: np.ndarray, q: np.ndarray, rows: np.ndarray, epsilon: float = 1e-3) -> float:
    """log det L_S by direct factorisation (the greedy's reference)."""
    rows = np.asarray(rows, np.int64)
    if not len(rows):
        return 0.0
    x = np.asarray(vectors, np.float64)[rows]
    qs = np.asarray(q, np.float64)[rows]
    L = qs[:, None] * (x @ x.T + epsilon * np.eye(len(rows))) * qs[None, :]
    sign, value = np.linalg.slogdet(L)
    return float(value) if sign > 0 else -np.inf


def explain_dpp(kept: bool, gain: float, cut: float, rel: float) -> str:
    if kept:
        return (f"kept: log-det gain {gain:+.4f} (relevance {rel:.4f}, and the volume it adds to the chosen rows' span)")
    if not np.isfinite(gain):
        return f"rejected: budget filled; already spanned by the chosen rows (relevance {rel:.4f})"
    return (f"rejected: budget filled; its last log-det gain {gain:+.4f} ≤ the last kept gain {cut:+.4f} "
            f"(relevance {rel:.4f})")
