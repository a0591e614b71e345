"""`gradalign`: keep the candidates whose loss gradient at φ_0 points with the adaptation set's.

score_b = cos(∇ℓ(φ_0; b), mean_{a∈D_A} ∇ℓ(φ_0; a)), over the surrogate's (sketched) adapter
gradients, as in LESS and online bilevel selection: a step on b also lowers the adaptation loss.
No surrogate training: both gradients are taken at the backbone.
"""
from __future__ import annotations

import time

import numpy as np

from albat.pipeline.methods.base import SelectionRequest, SelectionResult
from albat.pipeline.methods.ranked import check_budget, ranked_result, top_scores
from albat.pipeline.methods.surrogate_inputs import SurrogateMethod, prepare_pool


def gradient_alignment(grads: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Cosine of each row of `grads` with `target` (0 where either is the zero vector)."""
    norms = np.linalg.norm(grads, axis=1) * np.linalg.norm(target)
    dots = grads.astype(np.float64) @ target.astype(np.float64)
    return np.divide(dots, norms, out=np.zeros(len(grads)), where=norms > 0)


class GradAlignMethod(SurrogateMethod):
    name = "gradalign"

    def select(self, request: SelectionRequest) -> SelectionResult:
        opts = self.options
        clock = time.perf_counter()
        pool = prepare_pool(request, opts)
        check_budget(request.budget, len(pool.rows), "the candidate pool (raise query.k)")
        target = pool.surrogate.gradients(pool.adaptation, "initial").mean(0)
        cosine = gradient_alignment(pool.surrogate.gradients(pool.pairs, "initial"), target)
        seconds = time.perf_counter() - clock
        chosen = pool.rows[top_scores(cosine, pool.ids[pool.rows], request.budget)]
        score = pool.spread(cosine, -np.inf)
        cut = score[chosen[-1]] if len(chosen) else np.inf
        result = ranked_result(
            pool.ids, score, chosen, pool.query_idx, pool.blocked, pool.block_reason,
            kept_reason=lambda row, position: f"kept: gradient cosine {score[row]:+.4f}, position {position}",
            rejected_reason=lambda row: f"rejected: gradient cosine {score[row]:+.4f} below the budget's cut {cut:+.4f}",
            extra={"grad_cosine": score})
        result.report = {"score_seconds": round(seconds, 3),
                         "ms_per_candidate": round(1000 * seconds / max(len(pool.rows), 1), 4)}
        return result
