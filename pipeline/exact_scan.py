"""Exact inner-product search over one side of a store, read shard by shard: what the query stage
uses where no FAISS index covers the vectors it retrieves by (an image store's captions, for
text→text retrieval; the index holds the images).

    ExactScan(store, side, executor).search(queries, k) -> (similarities, positions)

It answers like a FAISS index labelled by row position (`search_pairs` takes either): each query's
k best global row positions, best first (ties: the lower position), -1 and -inf where the store
has fewer than k rows. Memory stays one shard deep (plus k per query per shard); a search reads
the side's vectors once, so its cost grows with the corpus, like a flat index's. The query stage
asks three times (the adaptation examples' neighbours, their near-duplicates, the exclude set's), so
`prefetch(queries, k)` answers every query of those searches in one pass and keeps the k best of
each: a later `search` of queries all prefetched with at least its k is sliced from them (the
best-first order with ties to the lower position makes a k-prefix of a longer list exact).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from albat.pipeline.shard_map import map_shards
from albat.stores.embedding_store import EmbeddingStore

QUERY_CHUNK = 1024  # queries scored against a shard at once: (chunk, shard rows) float32


def top_k_rows(similarity: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of (queries, rows) similarities: the k largest values and their columns, largest
    first, ties by the lower column; fewer than k columns give all of them."""
    k = min(k, similarity.shape[1])
    cols = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(similarity, cols, axis=1), cols


def shard_top_k(store: EmbeddingStore, shard: int, queries: np.ndarray, k: int, side: str) -> dict[str, np.ndarray]:
    """One shard's k best rows (shard-local positions) for every query."""
    vectors = store.vectors(shard, side)
    sims, rows = [], []
    for start in range(0, len(queries), QUERY_CHUNK):
        s, r = top_k_rows(queries[start:start + QUERY_CHUNK] @ np.asarray(vectors, np.float32).T, k)
        sims.append(s)
        rows.append(r)
    return {"sims": np.concatenate(sims).astype(np.float32), "rows": np.concatenate(rows).astype(np.int64)}


def merge_top_k(parts: list[tuple[np.ndarray, np.ndarray]], n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Shards' (similarities, global positions), in shard order, merged into each query's k best;
    -inf and -1 pad a store of fewer than k rows."""
    sims = np.concatenate([s for s, _ in parts], axis=1) if parts else np.empty((n_queries, 0), np.float32)
    positions = np.concatenate([p for _, p in parts], axis=1) if parts else np.empty((n_queries, 0), np.int64)
    best_sims, cols = top_k_rows(sims, k)  # positions rise with the column, so ties stay by lower position
    best = np.take_along_axis(positions, cols, axis=1)
    pad = k - best.shape[1]
    return (np.pad(best_sims, ((0, 0), (0, pad)), constant_values=-np.inf).astype(np.float32),
            np.pad(best, ((0, 0), (0, pad)), constant_values=-1).astype(np.int64))


class ExactScan:
    """A flat inner-product search over `side` of a store, one shard at a time (here or on Ray Data)."""

    def __init__(self, store: EmbeddingStore, side: str, executor: dict[str, Any] | None = None):
        self.store, self.side, self.executor = store, side, executor
        self.ntotal = int(sum(store.row_counts()))

        self.scans = 0  # passes over the store so far
        self._kept: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}  # query bytes -> its best (sims, positions)

    def prefetch(self, queries: np.ndarray, k: int) -> None:
        """One pass for every query: keep each one's k best for the searches that follow."""
        queries = np.unique(np.ascontiguousarray(queries, dtype=np.float32), axis=0)
        if len(queries):
            sims, positions = self._scan(queries, k)
            self._kept = {q.tobytes(): (s, p) for q, s, p in zip(queries, sims, positions)}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        kept = [self._kept.get(q.tobytes()) for q in queries]
        if len(queries) and all(hit is not None and len(hit[0]) >= min(k, self.ntotal) for hit in kept):
            width = min(k, self.ntotal)
            sims = np.full((len(queries), k), -np.inf, np.float32)
            positions = np.full((len(queries), k), -1, np.int64)
            sims[:, :width] = np.stack([hit[0][:width] for hit in kept])
            positions[:, :width] = np.stack([hit[1][:width] for hit in kept])
            return sims, positions
        return self._scan(queries, k)

    def _scan(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.scans += 1
        results = map_shards(shard_top_k, self.store, {"queries": queries, "k": k, "side": self.side},
                             self.executor, f"query: exact {self.side} scan")
        starts = np.concatenate([[0], np.cumsum(self.store.row_counts())])
        order = {shard: n for n, shard in enumerate(self.store.shard_indices())}
        parts = [(r["sims"], r["rows"] + starts[order[shard]]) for shard, r in results]
        return merge_top_k(parts, len(queries), k)
