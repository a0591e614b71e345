"""Stage 3, query: retrieve k neighbours per adaptation example; block duplicates of
adaptation and evaluation examples anywhere in the corpus, so no method can leak them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.encoders import TextEncoder, check_same_encoder, encoder_from_identity
from pipeline.stage import Plan, Stage
from stores.corpus import CorpusSpec, read_all, resolve_files
from stores.embedding_store import ID, TEXT_HASH, EmbeddingStore, text_hash
from stores.atomic import staged_directory
from stores.errors import AlbatError
from stores.index_store import LABELS, read_index
from stores.tables import write_array, write_table
from stores.workdir import fingerprint

MAX_QUERY_EXAMPLES = 100_000  # adaptation and exclusion sets are read whole
CANDIDATES_FILE = "candidates.parquet"
TABLES = ("adaptation.parquet", "adaptation.npy", "candidate_pairs.parquet", "blocked.parquet", CANDIDATES_FILE)


def search_pairs(query_vectors: np.ndarray, index: Any, k: int, store: EmbeddingStore) -> pa.Table:
    """Every (adaptation example, candidate) pair the index returns, in rank order. The index labels
    rows by store position, so FAISS's -1 ("no result") never hides a real id (ids may be negative)."""
    sims, positions = index.search(np.ascontiguousarray(query_vectors, dtype=np.float32), k)
    q_idx, rank = np.nonzero(positions >= 0)
    ids = store.ids_at(positions[q_idx, rank].astype(np.int64))
    return pa.table({"candidate_id": ids.astype(np.int64), "query_idx": q_idx.astype(np.int32),
                     "rank": rank.astype(np.int32), "similarity": sims[q_idx, rank].astype(np.float32)})


def exact_similarity(pairs: pa.Table, query_vectors: np.ndarray, store: EmbeddingStore) -> np.ndarray:
    """Cosine of each pair from the stored vectors (PQ search distances are only approximate)."""
    ids = pairs.column("candidate_id").to_numpy()
    uniq, inverse = np.unique(ids, return_inverse=True)
    vectors = store.vectors_for_ids(uniq)
    q = pairs.column("query_idx").to_numpy()
    return np.einsum("ij,ij->i", query_vectors[q], vectors[inverse]).astype(np.float32)


def exact_pairs(query_vectors: np.ndarray, index: Any, k: int, store: EmbeddingStore) -> pa.Table:
    """`search_pairs` with each similarity replaced by the exact cosine from the stored vectors."""
    pairs = search_pairs(query_vectors, index, k, store)
    return pairs.set_column(3, "similarity", pa.array(exact_similarity(pairs, query_vectors, store)))


def near_duplicates(vectors: np.ndarray, index: Any, k: int, threshold: float, kind: str,
                    store: EmbeddingStore) -> dict[int, tuple[float, str]]:
    """Corpus ids within `threshold` cosine of any example: id -> (similarity, reason).
    Similarities come from the stored vectors, so a compressed (PQ) index cannot blur the test."""
    blocked: dict[int, tuple[float, str]] = {}
    if len(vectors) == 0:
        return blocked
    pairs = exact_pairs(vectors, index, k, store)
    sims = pairs.column("similarity").to_numpy()
    examples = pairs.column("query_idx").to_numpy()
    ids = pairs.column("candidate_id").to_numpy()
    for row in np.nonzero(sims >= threshold)[0]:
        cid, sim, example = int(ids[row]), float(sims[row]), int(examples[row])
        if cid not in blocked or sim > blocked[cid][0]:
            blocked[cid] = (sim, f"near-duplicate of {kind} example {example} (similarity {sim:.3f})")
    return blocked


def top_k_per_query(pairs: pa.Table, k: int) -> pa.Table:
    """Keep each example's k most similar pairs, re-ranked by (exact) similarity."""
    q = pairs.column("query_idx").to_numpy()
    sims = pairs.column("similarity").to_numpy()
    order = np.lexsort((-sims, q))
    q_sorted = q[order]
    starts = np.searchsorted(q_sorted, q_sorted, side="left")
    rank = np.arange(len(order)) - starts
    keep = order[rank < k]
    return pa.table({"candidate_id": pairs.column("candidate_id").take(keep),
                     "query_idx": pairs.column("query_idx").take(keep),
                     "rank": pa.array(rank[rank < k], pa.int32()),
                     "similarity": pairs.column("similarity").take(keep)})


def exact_duplicates(texts: list[str], store: EmbeddingStore, kind: str) -> dict[int, tuple[float, str]]:
    """Corpus ids whose normalised text equals an example's, by the stored text hash."""
    wanted: dict[int, int] = {}
    for i, text in enumerate(texts):
        wanted.setdefault(text_hash(text), i)
    keys = np.fromiter(wanted, dtype=np.int64, count=len(wanted))
    blocked: dict[int, tuple[float, str]] = {}
    for index in store.shard_indices():
        meta = store.metadata(index, [ID, TEXT_HASH])
        hashes = meta.column(TEXT_HASH).to_numpy()
        for row in np.nonzero(np.isin(hashes, keys))[0]:
            blocked[int(meta.column(ID)[row].as_py())] = (1.0, f"exact duplicate of {kind} example "
                                                          f"{wanted[int(hashes[row])]}")
    return blocked


def merge_blocked(*parts: dict[int, tuple[float, str]]) -> pa.Table:
    merged: dict[int, tuple[float, str]] = {}
    for part in parts:
        for cid, (sim, reason) in part.items():
            if cid not in merged or sim > merged[cid][0] or reason.startswith("exact"):
                merged[cid] = (sim, reason)
    ids = sorted(merged)
    return pa.table({"id": pa.array(ids, pa.int64()),
                     "similarity": pa.array([merged[i][0] for i in ids], pa.float32()),
                     "reason": pa.array([merged[i][1] for i in ids], pa.string())})


def aggregate_candidates(pairs: pa.Table, blocked: pa.Table) -> pa.Table:
    """One row per unique candidate: its best pair, how many examples retrieved it, blocked or not."""
    ids = pairs.column("candidate_id").to_numpy()
    sims = pairs.column("similarity").to_numpy()
    order = np.lexsort((-sims, ids))  # by id, then best similarity first
    first = np.ones(len(order), bool)
    first[1:] = ids[order][1:] != ids[order][:-1]
    best = order[first]
    uniq, counts = np.unique(ids, return_counts=True)
    blocked_ids = blocked.column("id").to_numpy()
    reasons = dict(zip(blocked_ids.tolist(), blocked.column("reason").to_pylist()))
    cand = ids[best]
    return pa.table({
        "candidate_id": pa.array(cand, pa.int64()),
        "query_idx": pa.array(pairs.column("query_idx").to_numpy()[best], pa.int32()),
        "rank": pa.array(pairs.column("rank").to_numpy()[best], pa.int32()),
        "similarity": pa.array(sims[best], pa.float32()),
        "n_queries": pa.array(counts[np.searchsorted(uniq, cand)], pa.int32()),
        "blocked": pa.array(np.isin(cand, blocked_ids)),
        "block_reason": pa.array([reasons.get(int(c)) for c in cand], pa.string()),
    })


def _read_examples(paths: list[str], text_column: str, fmt: str, max_bytes: int, text_flag: str,
                   pair_column: str | None = None) -> tuple[pa.Table, list[str]]:
    spec = CorpusSpec(paths=paths, text_column=text_column, format=fmt, max_text_bytes=max_bytes,
                      text_flag=text_flag, skip_flag="", pair_column=pair_column, pair_flag="--adaptation-pair-column")
    table, sources, rows = read_all(spec, limit_rows=MAX_QUERY_EXAMPLES)
    table = table.append_column("source", pa.array(sources, pa.string())).append_column("row", pa.array(rows, pa.int64()))
    return table, table.column(text_column).to_pylist()


def _signature(paths: list[str], fmt: str) -> list:
    if not paths:
        return []
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p, _ in resolve_files(CorpusSpec(paths=paths, format=fmt))
            if Path(p).is_file()]


class QueryStage(Stage):
    name = "query"

    def plan(self) -> Plan:
        options, work = self.config["query"], self.work
        store = EmbeddingStore(work.store)
        info = store.require_complete()
        index, infos = read_index(work.index)
        if infos.get("labels") != LABELS:
            raise AlbatError(f"{work.index}: index built by an earlier albat (labels ids, not row positions); rerun "
                             "`albat index`, which rebuilds it")
        if infos.get("store_fingerprint") != info["fingerprint"] or infos.get("rows") != info["rows"]:
            raise AlbatError(f"{work.index}: index was built from another store; delete that folder and rerun "
                             "`albat index`")
        if not options["adaptation"]:
            raise AlbatError("no adaptation examples given; pass --adaptation FILE (Parquet, JSONL or one example a line)")
        index_record = work.stage_record("index") or {}
        fp = fingerprint({"options": options, "index": index_record.get("fingerprint"), "key": infos["index_key"],
                          "adaptation": _signature(options["adaptation"], options["format"]),
                          "exclude": _signature(options["exclude"], "auto")})
        optional = (["exclude.parquet"] if options["exclude"] else []) + (["adaptation.pair.npy"] if info.get("pair_column") else [])
        return Plan(fp, tuple(work.query / name for name in [*TABLES, *optional]), options,
                    {"store": store, "info": info, "index": index, "infos": infos})

    def compute(self, plan: Plan) -> dict[str, Any]:
        options, store, info = plan.recorded, plan.inputs["store"], plan.inputs["info"]
        index, infos = plan.inputs["index"], plan.inputs["infos"]
        encoder = encoder_from_identity(info["encoder"], device=options["device"])
        if options.get("encoder"):
            encoder = TextEncoder(name=options["encoder"], dtype=encoder.dtype, backend=encoder.backend,
                                  max_seq_length=encoder.max_seq_length,
                                  device=options["device"])
        check_same_encoder(info["encoder"], encoder, str(options["adaptation"][0]))

        max_bytes = int(self.config["embed"].get("max_text_bytes") or 0)
        pair_column = (options["pair_column"] or info.get("pair_column")) if info.get("pair_column") else None
        adaptation, texts = _read_examples(options["adaptation"], options["text_column"], options["format"], max_bytes,
                                           "--adaptation-text-column", pair_column)
        if not texts:
            raise AlbatError(f"{', '.join(options['adaptation'])}: zero adaptation examples; give at least one")
        exclude, exclude_texts = (_read_examples(options["exclude"], options["exclude_text_column"], "auto", max_bytes,
                                                 "--exclude-text-column")
                                  if options["exclude"] else (None, []))
        vectors = encoder.encode(texts)
        exclude_vectors = encoder.encode(exclude_texts)
        pair_vectors = encoder.encode(adaptation.column(pair_column).to_pylist()) if pair_column else None

        rows = int(info["rows"])
        k = min(int(options["k"]), rows)
        factor = max(1, int(options["rerank_factor"])) if infos["kind"] == "ivf_pq" else 1
        pairs = top_k_per_query(exact_pairs(vectors, index, min(k * factor, rows), store), k)
        dedup_k, threshold = min(int(options["dedup_k"]) * factor, rows), float(options["dedup_threshold"])
        blocked = merge_blocked(exact_duplicates(texts, store, "adaptation"),
                                exact_duplicates(exclude_texts, store, "exclude"),
                                near_duplicates(vectors, index, dedup_k, threshold, "adaptation", store),
                                near_duplicates(exclude_vectors, index, dedup_k, threshold, "exclude", store))
        candidates = aggregate_candidates(pairs, blocked)
        adaptation = adaptation.add_column(0, "query_idx", pa.array(np.arange(len(texts)), pa.int32()))
        return {"adaptation": adaptation, "vectors": vectors, "pair_vectors": pair_vectors, "exclude": exclude,
                "pairs": pairs, "blocked": blocked, "candidates": candidates, "k": k,
                "exclude_rows": len(exclude_texts)}

    def write(self, plan: Plan, computed: dict[str, Any]) -> dict[str, Any]:
        c = computed
        with staged_directory(self.work.query) as out:  # the query tables change together or not at all
            write_table(c["adaptation"], out / "adaptation.parquet")
            write_array(c["vectors"], out / "adaptation.npy")
            if c["pair_vectors"] is not None:  # the query side, for pair surrogates (pipeline.surrogates.contrastive)
                write_array(c["pair_vectors"], out / "adaptation.pair.npy")
            if c["exclude"] is not None:
                write_table(c["exclude"], out / "exclude.parquet")
            write_table(c["pairs"], out / "candidate_pairs.parquet")
            write_table(c["blocked"], out / "blocked.parquet")
            write_table(c["candidates"], out / CANDIDATES_FILE)
        candidates = c["candidates"]
        return {"adaptation": c["adaptation"].num_rows, "exclude": c["exclude_rows"], "k": c["k"],
                "pairs": c["pairs"].num_rows, "candidates": candidates.num_rows, "blocked": c["blocked"].num_rows,
                "blocked_candidates": int(np.sum(candidates.column("blocked").to_numpy(zero_copy_only=False)))}
