"""`knn`: nearest neighbours first, round-robin over adaptation examples (stage 1 only)."""
from __future__ import annotations

import numpy as np

from albat.pipeline.methods.base import SelectionMethod, SelectionRequest, SelectionResult
from albat.stores.errors import AlbatError


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
        # for each candidate: its selection position and the pair that selected it (-1: not kept)
        sorter = np.argsort(cand_ids)
        slot = sorter[np.searchsorted(cand_ids, ids[chosen], sorter=sorter)]
        sel_rank = np.full(len(cand_ids), -1, dtype=np.int64)
        sel_rank[slot] = np.arange(len(chosen))
        pair_of = np.full(len(cand_ids), -1, dtype=np.int64)
        pair_of[slot] = chosen
        keep = sel_rank >= 0
        query_idx = np.where(keep, q[pair_of], cand.column("query_idx").to_numpy()).astype(np.int32)
        score = np.where(keep, sims[pair_of], cand.column("similarity").to_numpy())
        reasons = []
        for pair, position, blocked, best_rank in zip(pair_of, sel_rank, cand.column("block_reason").to_pylist(),
                                                      cand.column("rank").to_numpy()):
            if position >= 0:
                reasons.append(f"kept: neighbour rank {int(rank[pair])} of adaptation example {int(q[pair])}, "
                               f"round-robin position {int(position)}")
            elif blocked:
                reasons.append(f"rejected: {blocked}")
            else:
                reasons.append(f"rejected: budget {request.budget} filled before its rank {int(best_rank)}")
        return SelectionResult(ids=cand_ids, score=score, keep=keep, reason=reasons, rank=sel_rank,
                               query_idx=query_idx)
