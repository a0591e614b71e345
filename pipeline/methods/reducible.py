"""ALBAT's `reducible` objective: re-rank the retrieved pool by the loss the adaptation removes.

GOT-D / RHO-loss read through the two propositions: an example the backbone φ_0 already fits adds
nothing, and an example the adapted surrogate φ_s (fitted on the adaptation set) does not fit better
than φ_0 pulls the adapter away from the target. What adaptation makes easier is what the target and
the candidate share, so the candidate's reducible loss

    red_b = ℓ(φ_0; b) − ℓ(φ_s; b)            (= −Δℓ_b, the v1 validity quantity with its sign flipped)

is a target-likeness measured by the model being adapted rather than by the retrieval encoder. Both
are forward passes over the candidates (no gradients), so the cost is the surrogate's fit plus two
loss evaluations. Retrieval stays the pool (RDS+: cosine retrieval is the strong baseline) and stays
in the score:

    score_b = z(red)_b + w · z(rel)_b

(`reducible_units=sum`: red_b times b's token count, the whole text's log-likelihood ratio.)

with z the standardisation over the selectable pool (so the two terms are on one scale whatever the
losses' units) and rel_b the query stage's cosine of b to its nearest adaptation example; w is the
option `relevance_weight` (0: reducible loss alone). The top `budget` scores are kept, ties to the
lower id. Every function here takes and returns arrays.
"""
from __future__ import annotations

import numpy as np


def zscore(values: np.ndarray) -> np.ndarray:
    """(v − mean) / std over the array; all zeros where the std is 0 (a constant term ranks nothing)."""
    v = np.asarray(values, np.float64)
    if not len(v):
        return v
    sd = float(v.std())
    return (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)


def reducible_scores(loss_initial: np.ndarray, loss_adapted: np.ndarray, relevance: np.ndarray,
                     relevance_weight: float, units: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(score, red): red = ℓ(φ_0) − ℓ(φ_s) per candidate, score = z(red) + w·z(rel). With `units`
    (the tokens each mean loss averages over), red = units·(ℓ(φ_0) − ℓ(φ_s)): the log-likelihood
    ratio log p_φs(b) − log p_φ0(b) of the whole candidate rather than per token."""
    red = np.asarray(loss_initial, np.float64) - np.asarray(loss_adapted, np.float64)
    if units is not None:
        red = red * np.asarray(units, np.float64)
    return zscore(red) + relevance_weight * zscore(relevance), red


def explain_reducible(kept: bool, score: float, red: float, z_red: float, z_rel: float, weight: float,
                      cut: float | None) -> str:
    """One line per decision: the score, its two terms, and which one decided. cut=None: the order
    was not by score alone (coverage), so a rejection names the budget only."""
    terms = f"z(reducible loss {red:+.4f}) {z_red:+.3f} + {weight:g}·z(relevance) {weight * z_rel:+.3f}"
    if kept:
        top = "reducible loss" if abs(z_red) >= abs(weight * z_rel) else "relevance"
        return f"kept: score {score:+.4f} = {terms}; decided by {top}"
    if cut is None:
        return f"rejected: budget filled; score {score:+.4f} = {terms}"
    return f"rejected: budget filled; score {score:+.4f} = {terms} < the last kept score {cut:+.4f}"
