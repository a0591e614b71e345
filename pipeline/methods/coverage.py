"""Coverage: knn's round-robin over adaptation examples, each example's neighbours ordered by a score.

Both benchmark tracks found that covering every adaptation example matters more than closeness
(docs/albat-design.md): a global top-m by any score concentrates on the examples with the densest
neighbourhoods, while `knn`'s round-robin gives each example its share. `coverage=round_robin` keeps
that round-robin and lets the surrogate decide only *which* of an example's retrieved neighbours come
first: round r takes, from every adaptation example in turn, its r-th best neighbour by the method's
score (ties to the retrieval rank), skipping ids taken earlier. With the retrieval cosine as the score
it is exactly `knn`'s order. Pure: arrays in, pair indices out.
"""
from __future__ import annotations

import numpy as np

from albat.pipeline.methods.knn import round_robin_order


def rank_within_query(query_idx: np.ndarray, rank: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Each pair's position in its adaptation example's list ordered by descending score, ties to the
    lower retrieval rank (0 = that example's best-scored neighbour)."""
    query_idx, rank, score = np.asarray(query_idx), np.asarray(rank), np.asarray(score, np.float64)
    order = np.lexsort((rank, -score, query_idx))
    q = query_idx[order]
    start = np.r_[0, np.flatnonzero(q[1:] != q[:-1]) + 1]
    group_start = np.repeat(start, np.diff(np.r_[start, len(q)]))
    out = np.empty(len(order), np.int64)
    out[order] = np.arange(len(order)) - group_start
    return out


def pair_scores(pair_ids: np.ndarray, cand_ids: np.ndarray, cand_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score per pair, found): each pair's candidate score, looked up by id; `found` is False (and the
    score −inf) where the pair's id is not among the scored candidates (blocked ones)."""
    pair_ids, cand_ids = np.asarray(pair_ids), np.asarray(cand_ids)
    if not len(cand_ids):
        return np.full(len(pair_ids), -np.inf), np.zeros(len(pair_ids), bool)
    sorter = np.argsort(cand_ids, kind="stable")
    pos = np.clip(np.searchsorted(cand_ids, pair_ids, sorter=sorter), 0, len(cand_ids) - 1)
    found = cand_ids[sorter[pos]] == pair_ids
    return np.where(found, np.asarray(cand_score, np.float64)[sorter[pos]], -np.inf), found


def covered_rows(pairs_query: np.ndarray, pairs_rank: np.ndarray, pairs_ids: np.ndarray, row_ids: np.ndarray,
                 row_score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, turn, query) over `row_ids` (the scored, selectable candidates): `order` holds indices
    into `row_ids` in coverage order, each candidate once, at its first pair's round-robin position;
    turn[i] is the round at which candidate i first comes up (its best position in any adaptation
    example's re-ranked list) and query[i] that example (−1 and −1 where no pair retrieved it)."""
    pairs_query, pairs_ids = np.asarray(pairs_query), np.asarray(pairs_ids)
    score, found = pair_scores(pairs_ids, row_ids, row_score)
    within = rank_within_query(pairs_query, pairs_rank, score) if len(pairs_ids) else np.zeros(0, np.int64)
    order = round_robin_order(pairs_query, within, pairs_ids, found) if len(pairs_ids) else np.zeros(0, np.int64)
    sorter = np.argsort(row_ids, kind="stable")
    turn, query = np.full(len(row_ids), -1, np.int64), np.full(len(row_ids), -1, np.int64)
    if len(order):
        rows = sorter[np.searchsorted(row_ids, pairs_ids[order], sorter=sorter)]
        turn[rows], query[rows] = within[order], pairs_query[order]
    else:
        rows = np.zeros(0, np.int64)
    return rows, turn, query


def explain_turn(position: int, turn: int, query: int, cut_turn: int) -> str:
    """The coverage half of a decision: the round-robin position, or the round the budget ran out at."""
    if position >= 0:
        return f"round-robin position {position}, neighbour {turn} (by score) of adaptation example {query}"
    if turn < 0:
        return "no adaptation example retrieved it"
    return (f"budget filled in round {cut_turn}, before its turn as neighbour {turn} (by score) of "
            f"adaptation example {query}")
