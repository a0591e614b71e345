"""Tiny hand-made stores and requests for the selection-method unit tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from albat.pipeline.methods.base import SelectionRequest
from albat.pipeline.query import aggregate_candidates, merge_blocked
from albat.stores.embedding_store import ID, EmbeddingStore


def make_store(root: Path, ids: list[int], texts: list[str], vectors: np.ndarray, shard_rows: int,
               pair_vectors: np.ndarray | None = None) -> EmbeddingStore:
    """A complete store with a `text` column, split into shards of `shard_rows` rows (and a pair
    column `caption` whose vectors are `pair_vectors`, if given)."""
    store = EmbeddingStore(root)
    for index, start in enumerate(range(0, len(ids), shard_rows)):
        stop = start + shard_rows
        meta = pa.table({ID: pa.array(ids[start:stop], pa.int64()), "text": pa.array(texts[start:stop], pa.string())})
        pair = None if pair_vectors is None else np.asarray(pair_vectors[start:stop], np.float32)
        store.write_shard(index, np.asarray(vectors[start:stop], np.float32), meta, pair)
    store.write_info({"dim": int(vectors.shape[1]), "rows": len(ids), "complete": True, "text_column": "text",
                      **({"pair_column": "caption"} if pair_vectors is not None else {})})
    return store


def make_request(store: EmbeddingStore | None, candidate_ids: list[int], blocked: dict[int, str], budget: int,
                 seed: int = 0, texts: list[str] | None = None, vectors: np.ndarray | None = None) -> SelectionRequest:
    """A request whose candidates are `candidate_ids`, each retrieved by adaptation example i % 2 at rank 0."""
    pairs = pa.table({"candidate_id": pa.array(candidate_ids, pa.int64()),
                      "query_idx": pa.array([i % 2 for i in range(len(candidate_ids))], pa.int32()),
                      "rank": pa.array(np.zeros(len(candidate_ids)), pa.int32()),
                      "similarity": pa.array(np.ones(len(candidate_ids)), pa.float32())})
    blocked_table = merge_blocked({cid: (1.0, reason) for cid, reason in blocked.items()})
    return SelectionRequest(candidates=aggregate_candidates(pairs, blocked_table), pairs=pairs,
                            blocked_ids=blocked_table.column("id").to_numpy(), store=store,
                            adaptation_texts=texts or [],
                            adaptation_vectors=np.zeros((0, 2), np.float32) if vectors is None else vectors,
                            budget=budget, seed=seed)
