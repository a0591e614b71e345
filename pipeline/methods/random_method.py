"""`random`: uniform draws from the whole corpus (the paper's baseline), ignoring the candidate pool."""
from __future__ import annotations

import numpy as np

from albat.pipeline.methods.base import SelectionMethod, SelectionRequest, SelectionResult
from albat.stores.errors import AlbatError


def uniform_draw(n_rows: int, budget: int, blocked_positions: np.ndarray, seed: int) -> np.ndarray:
    """`budget` distinct row positions, uniform over the rows not blocked, in draw order."""
    available = n_rows - len(blocked_positions)
    if budget > available:
        raise AlbatError(f"budget {budget} exceeds the {available} selectable corpus rows; lower filter.budget")
    rng = np.random.default_rng(seed)
    draw = rng.choice(n_rows, size=min(n_rows, budget + len(blocked_positions)), replace=False)
    return draw[~np.isin(draw, blocked_positions)][:budget]


class RandomMethod(SelectionMethod):
    name = "random"
    uses_candidates = False

    def select(self, request: SelectionRequest) -> SelectionResult:
        store = request.store
        blocked_positions = store.id_positions(request.blocked_ids) if len(request.blocked_ids) else np.empty(0, np.int64)
        positions = uniform_draw(int(store.info["rows"]), request.budget, blocked_positions, request.seed)
        drawn = store.ids_at(positions)
        cand_ids = request.candidates.column("candidate_id").to_numpy()
        others = cand_ids[~np.isin(cand_ids, drawn)]
        ids = np.concatenate([drawn, others])
        m = len(drawn)
        reasons = [f"kept: uniform draw {i} of {m} (seed {request.seed})" for i in range(m)]
        reasons += ["rejected: not drawn (random ignores the candidate pool)"] * len(others)
        return SelectionResult(
            ids=ids, score=np.concatenate([1.0 - np.arange(m) / max(m, 1), np.zeros(len(others))]),
            keep=np.arange(len(ids)) < m, reason=reasons,
            rank=np.concatenate([np.arange(m), -np.ones(len(others), np.int64)]),
            query_idx=-np.ones(len(ids), np.int32))
