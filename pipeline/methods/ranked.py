"""Helpers the scored methods (dsir, classifier, gradalign, albat) share: the candidate table's
columns, top-by-score with id tie-breaks, and one decision row (score, keep, rank, reason) per
considered id.

Why one place: every method must give every row a reason and must name a blocked row's block, so
that a user can ask in SQL why a row was or was not chosen; writing that loop once keeps the
reasons consistent between methods.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa

from albat.pipeline.methods.base import SelectionResult
from albat.stores.errors import AlbatError

BLOCKED = "blocked (a duplicate of adaptation or evaluation data)"


def candidate_columns(candidates: pa.Table) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Ids, retrieving adaptation example (-1 if unknown) and block reason of each candidate."""
    ids = candidates.column("candidate_id").to_numpy().astype(np.int64)
    names = candidates.column_names
    query_idx = (candidates.column("query_idx").to_numpy().astype(np.int32) if "query_idx" in names
                 else np.full(len(ids), -1, np.int32))
    reasons = candidates.column("block_reason").to_pylist() if "block_reason" in names else [None] * len(ids)
    return ids, query_idx, reasons


def check_budget(budget: int, selectable: int, pool: str) -> None:
    if budget > selectable:
        raise AlbatError(f"budget {budget} exceeds the {selectable} selectable rows of {pool}; lower filter.budget")


def top_scores(score: np.ndarray, ids: np.ndarray, budget: int) -> np.ndarray:
    """Indices of the `budget` highest scores, ties to the lower id."""
    return np.lexsort((ids, -score))[:budget]


def ranked_result(ids: np.ndarray, score: np.ndarray, chosen: np.ndarray, query_idx: np.ndarray,
                  blocked: np.ndarray, block_reason: list[str | None],
                  kept_reason: Callable[[int, int], str], rejected_reason: Callable[[int], str],
                  extra: dict[str, np.ndarray] | None = None) -> SelectionResult:
    """A result over `ids` keeping rows `chosen` (indices, in selection order).

    kept_reason(row, position) and rejected_reason(row) write the method's lines; a blocked row
    that was not kept is rejected with its block reason."""
    rank = np.full(len(ids), -1, np.int64)
    rank[np.asarray(chosen, np.int64)] = np.arange(len(chosen))
    reasons = []
    for row in range(len(ids)):
        if rank[row] >= 0:
            reasons.append(kept_reason(row, int(rank[row])))
        elif blocked[row]:
            reasons.append(f"rejected: {block_reason[row] or BLOCKED}")
        else:
            reasons.append(rejected_reason(row))
    return SelectionResult(ids=np.asarray(ids, np.int64), score=np.asarray(score, np.float64), keep=rank >= 0,
                           reason=reasons, rank=rank, query_idx=np.asarray(query_idx, np.int32), extra=extra or {})
