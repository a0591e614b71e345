"""Stage 3, query: retrieve k neighbours per adaptation example; block duplicates of
adaptation and evaluation examples anywhere in the corpus, so no method can leak them."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from albat.pipeline.adaptation_rows import adaptation_columns
from albat.pipeline.encoders import TextEncoder, check_same_encoder, encoder_from_identity
from albat.pipeline.shard_map import executor_settings, map_shards
from albat.pipeline.progress import progress_bar
from albat.pipeline.stage import Plan, Stage
from albat.stores.corpus import CorpusSpec, input_signature, read_all
from albat.stores.embedding_store import EXAMPLE_BOOKKEEPING as BOOKKEEPING, ID, ROW, SOURCE, TEXT_HASH, EmbeddingStore, text_hash
from albat.stores.atomic import staged_directory
from albat.stores.chat import as_texts
from albat.stores.errors import AlbatError
from albat.stores.sources import is_text_file
from albat.stores.index_store import LABELS, read_index
from albat.stores.tables import write_array, write_table
from albat.stores.workdir import fingerprint

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


def shard_duplicates(store: EmbeddingStore, shard: int, keys: np.ndarray) -> dict[str, np.ndarray]:
    """One shard's rows whose stored hash (normalised text, or an image store's decoded pixels) is
    among `keys`: their ids and hashes."""
    meta = store.metadata(shard, [ID, TEXT_HASH])
    hashes = meta.column(TEXT_HASH).to_numpy()
    rows = np.nonzero(np.isin(hashes, keys))[0]
    return {"ids": meta.column(ID).to_numpy()[rows].astype(np.int64), "hashes": hashes[rows].astype(np.int64)}


def exact_duplicates(example_sets: Sequence[tuple[str, list[str]]], store: EmbeddingStore,
                     executor: dict[str, Any] | None = None) -> list[dict[int, tuple[float, str]]]:
    """For each (kind, texts): the corpus ids whose normalised text equals an example's (`hash_duplicates`)."""
    return hash_duplicates([(kind, [text_hash(t) for t in texts]) for kind, texts in example_sets], store, executor)


def hash_duplicates(example_sets: Sequence[tuple[str, list[int]]], store: EmbeddingStore,
                    executor: dict[str, Any] | None = None) -> list[dict[int, tuple[float, str]]]:
    """For each (kind, example hashes): the corpus ids whose stored hash equals an example's, with the
    reason. One scan of the store for every set, shard by shard, here or on Ray (`executor`,
    `pipeline.shard_map`); the result is the same either way."""
    wanted = []
    for _, hashes in example_sets:
        first: dict[int, int] = {}
        for i, key in enumerate(hashes):
            first.setdefault(int(key), i)
        wanted.append(first)
    keys = np.unique(np.fromiter((h for w in wanted for h in w), dtype=np.int64))
    blocked: list[dict[int, tuple[float, str]]] = [{} for _ in example_sets]
    if len(keys) == 0:
        return blocked
    for _, found in map_shards(shard_duplicates, store, {"keys": keys}, executor, "query: exact duplicates"):
        for cid, key in zip(found["ids"].tolist(), found["hashes"].tolist()):
            for (kind, _), first, out in zip(example_sets, wanted, blocked):
                if key in first:
                    out[cid] = (1.0, f"exact duplicate of {kind} example {first[key]}")
    return blocked


def merge_blocked(*parts: dict[int, tuple[float, str]]) -> pa.Table:
    merged: dict[int, tuple[float, str]] = {}
    for part in parts:
        for cid, (sim, reason) in part.items():
            exact_kept = cid in merged and merged[cid][1].startswith("exact")  # a cosine of 1.0000001 is no better
            if cid not in merged or (not exact_kept and (sim > merged[cid][0] or reason.startswith("exact"))):
                merged[cid] = (sim, reason)
    ids = sorted(merged)
    return pa.table({"id": pa.array(ids, pa.int64()),
                     "similarity": pa.array([merged[i][0] for i in ids], pa.float32()),
                     "reason": pa.array([merged[i][1] for i in ids], pa.string())})


def candidate_duplicates(ids: np.ndarray, sims: np.ndarray, hashes: np.ndarray,
                         blocked_ids: np.ndarray) -> dict[int, tuple[float, str]]:
    """Candidates whose stored hash (normalised text, or an image's decoded pixels) equals another
    candidate's: id -> (1.0, reason). In each group of equal hashes the candidate with the highest
    similarity (then the lowest id) stays; if one of the group is already blocked, every other member
    is blocked too (the same content as a blocked row). Already blocked ids are not listed again."""
    ids, sims, hashes = np.asarray(ids, np.int64), np.asarray(sims, np.float64), np.asarray(hashes, np.int64)
    blocked = np.isin(ids, blocked_ids)
    out: dict[int, tuple[float, str]] = {}
    order = np.lexsort((ids, -sims, hashes))  # by hash, then best similarity, then lowest id
    groups = np.split(order, np.nonzero(np.diff(hashes[order]))[0] + 1) if len(order) else []
    for group in groups:
        if len(group) < 2:
            continue
        held = group[blocked[group]]
        keeper = held[0] if len(held) else group[0]
        reason = (f"exact duplicate of blocked candidate {int(ids[keeper])}" if len(held)
                  else f"exact duplicate of candidate {int(ids[keeper])} (kept in its place)")
        for row in group:
            if row != keeper and not blocked[row]:
                out[int(ids[row])] = (1.0, reason)
    return out


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


def read_examples(paths: list[str], text_column: str, fmt: str, max_bytes: int, text_flag: str,
                   pair_column: str | None = None, chat_template: str = "lines",
                   all_columns: bool = False) -> tuple[pa.Table, list[str]]:
    """The examples (with every column when `all_columns`: adaptation rows are carried whole to the
    output), their source file and row as `albat_source`/`albat_row`, and the texts the encoder reads."""
    spec = CorpusSpec(paths=paths, text_column=text_column, format=fmt, max_text_bytes=max_bytes,
                      text_flag=text_flag, skip_flag="", pair_column=pair_column, pair_flag="--adaptation-pair-column",
                      chat_template=chat_template, all_columns=all_columns)
    table, sources, rows = read_all(spec, limit_rows=MAX_QUERY_EXAMPLES)
    clash = [c for c in table.column_names if c in BOOKKEEPING or c.startswith("albat_")]
    if clash:
        raise AlbatError(f"{', '.join(paths)}: column '{clash[0]}' collides with albat's own columns (query_idx, "
                         "albat_*); rename or drop it in that file")
    table = table.append_column(SOURCE, pa.array(sources, pa.string())).append_column(ROW, pa.array(rows, pa.int64()))
    return table, spec.texts(table)


def retrieval_side(info: dict[str, Any], options: dict[str, Any]) -> str:
    """Which side of the store the adaptation set retrieves by: "pair" (text→text over an image store's
    caption vectors) for `retrieve_by = "caption"`, or `auto` with captions alone (every adaptation
    path a JSONL, CSV, TSV or text file); else "text" (the embedded column: texts, or images by images)."""
    if info.get("modality") != "image":
        if options["retrieve_by"] != "auto":
            raise AlbatError(f"--retrieve-by {options['retrieve_by']}: only an image store has images and captions to "
                             "choose between; drop the option for a text store")
        return "text"
    captions_only = bool(options["adaptation"]) and all(is_text_file(p) for p in options["adaptation"])
    if options["retrieve_by"] == "image" and captions_only:
        raise AlbatError(f"{', '.join(options['adaptation'])}: captions alone have no images to retrieve by; use "
                         "--retrieve-by caption (or auto), or give the adaptation images with their captions")
    by_caption = options["retrieve_by"] == "caption" or (options["retrieve_by"] == "auto" and captions_only)
    return "pair" if by_caption else "text"


def _signature(paths: list[str], fmt: str) -> list:
    return input_signature(CorpusSpec(paths=paths, format=fmt)) if paths else []


def retrieve(options: dict[str, Any], store: EmbeddingStore, info: dict[str, Any], index: Any, infos: dict[str, Any],
             adaptation: pa.Table, vectors: np.ndarray, pair_vectors: np.ndarray | None, hashes: list[int],
             exclude: pa.Table | None, exclude_vectors: np.ndarray, exclude_hashes: list[int],
             executor: dict[str, Any] | None = None) -> dict[str, Any]:
    """The query stage's outputs from the encoded examples: each example's k neighbours, and every
    corpus row blocked as an exact (same stored hash) or near (cosine) duplicate of an example."""
    rows = int(info["rows"])
    k = min(int(options["k"]), rows)
    factor = max(1, int(options["rerank_factor"])) if infos["kind"] == "ivf_pq" else 1
    dedup_k, threshold = min(int(options["dedup_k"]) * factor, rows), float(options["dedup_threshold"])
    if hasattr(index, "prefetch"):  # an exact scan: one pass over the store answers the three searches below
        index.prefetch(np.concatenate([vectors, np.reshape(exclude_vectors, (-1, vectors.shape[1]))]),
                       max(k * factor, dedup_k))
    pairs = top_k_per_query(exact_pairs(vectors, index, min(k * factor, rows), store), k)
    parts = [*hash_duplicates([("adaptation", hashes), ("exclude", exclude_hashes)], store, executor),
             near_duplicates(vectors, index, dedup_k, threshold, "adaptation", store),
             near_duplicates(exclude_vectors, index, dedup_k, threshold, "exclude", store)]
    blocked = merge_blocked(*parts)
    candidates = aggregate_candidates(pairs, blocked)
    if options["dedup_candidates"] and candidates.num_rows:
        cand_ids = candidates.column("candidate_id").to_numpy()
        twins = candidate_duplicates(cand_ids, candidates.column("similarity").to_numpy(),
                                     store.column_for_ids(cand_ids, TEXT_HASH), blocked.column("id").to_numpy())
        if twins:  # blocked too: the candidates' blocked flags and reasons are drawn again
            blocked = merge_blocked(*parts, twins)
            candidates = aggregate_candidates(pairs, blocked)
    adaptation = adaptation.add_column(0, "query_idx", pa.array(np.arange(len(vectors)), pa.int32()))
    return {"adaptation": adaptation, "vectors": vectors, "pair_vectors": pair_vectors, "exclude": exclude,
            "pairs": pairs, "blocked": blocked, "candidates": candidates, "k": k,
            "exclude_rows": exclude.num_rows if exclude is not None else 0}


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
        side = retrieval_side(info, options)  # refuses a --retrieve-by that cannot apply, before anything is written
        pair_vectors = info.get("pair_column") and side == "text"
        optional = (["exclude.parquet"] if options["exclude"] else []) + (["adaptation.pair.npy"] if pair_vectors else [])
        return Plan(fp, tuple(work.query / name for name in [*TABLES, *optional]), options,
                    {"store": store, "info": info, "index": index, "infos": infos},
                    {"index": index_record["fingerprint"]} if index_record else {})

    def compute(self, plan: Plan) -> dict[str, Any]:
        options, store, info = plan.recorded, plan.inputs["store"], plan.inputs["info"]
        index, infos = plan.inputs["index"], plan.inputs["infos"]
        if info.get("modality") == "image":
            from albat.pipeline.image_query import compute_image_query

            return compute_image_query(options, self.config, store, info, index, infos)
        encoder = encoder_from_identity(info["encoder"], device=options["device"])
        if options.get("encoder"):
            encoder = TextEncoder(name=options["encoder"], dtype=encoder.dtype, backend=encoder.backend,
                                  max_seq_length=encoder.max_seq_length,
                                  device=options["device"])
        check_same_encoder(info["encoder"], encoder, str(options["adaptation"][0]))

        max_bytes = int(self.config["embed"].get("max_text_bytes") or 0)
        pair_column = (options["pair_column"] or info.get("pair_column")) if info.get("pair_column") else None
        template = store.chat_template
        adaptation, texts = read_examples(options["adaptation"], options["text_column"], options["format"], max_bytes,
                                           "--adaptation-text-column", pair_column, template, all_columns=True)
        if not texts:
            raise AlbatError(f"{', '.join(options['adaptation'])}: zero adaptation examples; give at least one")
        if self.config["emit"]["include_adaptation"]:  # emit casts them to the backbone's types: refuse a misfit now
            try:
                adaptation_columns(adaptation, store.user_schema(), info["text_column"], options["text_column"], template)
            except AlbatError as exc:
                raise AlbatError(f"{', '.join(options['adaptation'])}: {exc} (or pass --no-adaptation)") from None
        exclude, exclude_texts = (read_examples(options["exclude"], options["exclude_text_column"], "auto", max_bytes,
                                                 "--exclude-text-column", chat_template=template)
                                  if options["exclude"] else (None, []))
        pair_texts = as_texts(adaptation.column(pair_column), template) if pair_column else []
        with progress_bar(total=len(texts) + len(exclude_texts) + len(pair_texts), desc="query: encode") as bar:
            vectors = encoder.encode(texts, bar.update)
            exclude_vectors = encoder.encode(exclude_texts, bar.update)
            pair_vectors = encoder.encode(pair_texts, bar.update) if pair_column else None

        return retrieve(options, store, info, index, infos, adaptation, vectors, pair_vectors,
                        [text_hash(t) for t in texts], exclude, exclude_vectors, [text_hash(t) for t in exclude_texts],
                        executor_settings(self.config))

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
                "side": c.get("side", "text"),
                "pairs": c["pairs"].num_rows, "candidates": candidates.num_rows, "blocked": c["blocked"].num_rows,
                "blocked_candidates": int(np.sum(candidates.column("blocked").to_numpy(zero_copy_only=False)))}
