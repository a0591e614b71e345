"""`knn`: nearest neighbours first, round-robin over adaptation examples (stage 1 only)."""
from __future__ import annotations

import numpy as np

from pipeline.methods.base import SelectionMethod, SelectionRequest, SelectionResult
from stores.errors import AlbatError


def round_robin_order(query_idx: np.ndarray, rank: np.ndarray, ids: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Indices into the pair arrays in selection order: every example's rank-0 neighbour, then
    every rank-1 neighbour, ..., skipping disallowed ids and ids already taken."""
    order = np.lexsort((query_idx, rank))
    order = order[allowed[order]]
    _, first = np.unique(ids[order], return_index=True)
    return order[np.sort(first)]


class KnnMethod(SelectionMethod):
    name = "knn"

    def select(self, request: SelectionRequest) -> SelectionResult:
        pairs = request.pairs
        ids = pairs.column("candidate_id").to_numpy()
        q = pairs.column("query_idx").to_numpy()
        rank = pairs.column("rank").to_numpy()
        sims = pairs.column("similarity").to_numpy().astype(np.float64)
        allowed = ~np.isin(ids, request.blocked_ids)
        order = round_robin_order(q, rank, ids, allowed)
        if request.budget > len(order):
            raise AlbatError(f"budget {request.budget} exceeds the {len(order)} selectable candidates; "
                             "raise query.k or lower filter.budget")
        chosen = order[: request.budget]
        cand = request.candidates
        cand_ids = cand.column("candidate_id").to_numpy()
        position = {int(ids[i]): n for n, i in enumerate(chosen)}
        keep = np.array([int(c) in position for c in cand_ids])
        sel_rank = np.array([position.get(int(c), -1) for c in cand_ids], dtype=np.int64)
        block_reason = cand.column("block_reason").to_pylist()
        reasons = []
        for c, k, r, b, rk in zip(cand_ids, keep, sel_rank, block_reason, cand.column("rank").to_numpy()):
            if k:
                reasons.append(f"kept: neighbour rank {int(rank[chosen[r]])} of adaptation example "
                               f"{int(q[chosen[r]])}, round-robin position {int(r)}")
            elif b:
                reasons.append(f"rejected: {b}")
            else:
                reasons.append(f"rejected: budget {request.budget} filled before its rank {int(rk)}")
        query_idx = np.where(keep, [int(q[chosen[r]]) if r >= 0 else -1 for r in sel_rank],
                             cand.column("query_idx").to_numpy()).astype(np.int32)
        score = np.where(keep, [sims[chosen[r]] if r >= 0 else 0.0 for r in sel_rank],
                         cand.column("similarity").to_numpy())
        return SelectionResult(ids=cand_ids, score=score, keep=keep, reason=reasons, rank=sel_rank,
                               query_idx=query_idx)
