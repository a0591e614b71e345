"""`dsir`: hashed n-gram importance resampling (Xie et al. 2023, "Data Selection for Language Models
via Importance Resampling").

Why: the standard cheap, text-only baseline. It needs no encoder and no model: it prefers backbone
texts whose word statistics look like the adaptation set's, and it samples (rather than takes the
top scores) so the selection keeps the target distribution's diversity.

Features are lowercased word unigrams and bigrams hashed into `buckets` bins with CRC-32 (stable
across runs and machines, unlike Python's salted hash()). The target distribution p_T comes from
the adaptation texts, the raw distribution p_R from the pool, both smoothed with `alpha`
pseudo-counts per bin. A text's log importance weight is the sum over its features of
log p_T - log p_R; `budget` rows are drawn without replacement with probability proportional to
the weight, by Gumbel top-k. The Gumbel noise of store shard s comes from its own generator `[seed, s]`, so
a row's key does not depend on the order shards are processed in (nor on the pool).

Options: `pool` = "corpus" (default: the whole store, read shard by shard in two passes, p_R first,
then the weights with a running top-`budget`, so memory stays one shard deep; each pass maps one
function over the shards, here or on Ray Data with `--executor ray`, same draw either way) or "candidates" (the
stage-1 pool only); `buckets` (10,000); `alpha` (1.0). Blocked ids are never drawn. The result holds
the kept rows plus every candidate; `score` is the log weight and `dsir_key` the Gumbel-perturbed key
that decided the draw (the kept rows have the `budget` largest keys).
"""
from __future__ import annotations

import re
import zlib
from typing import Sequence

import numpy as np
from scipy import sparse

from albat.pipeline.methods.base import SelectionMethod, SelectionRequest, SelectionResult
from albat.pipeline.methods.ranked import candidate_columns, check_budget, ranked_result
from albat.pipeline.options import FLOAT, INT, STR, Option
from albat.pipeline.shard_map import map_shards
from albat.stores.chat import as_texts
from albat.stores.embedding_store import ID, EmbeddingStore

_WORD = re.compile(r"\w+")


def ngrams(text: str) -> list[str]:
    """Lowercased word unigrams, then bigrams ("w1 w2")."""
    words = _WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def hashed_ngram_counts(texts: Sequence[str | None], buckets: int) -> sparse.csr_matrix:
    """(len(texts), buckets) feature counts per text. Sparse: a shard of texts x 10,000 dense bins
    would not fit in memory, while a text has only a few hundred features."""
    rows: list[int] = []
    cols: list[int] = []
    for i, text in enumerate(texts):
        features = ngrams(text or "")
        rows.extend([i] * len(features))
        cols.extend(zlib.crc32(f.encode("utf-8")) % buckets for f in features)
    return sparse.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(texts), buckets))


def log_ratio(target_counts: np.ndarray, raw_counts: np.ndarray, alpha: float) -> np.ndarray:
    """log p_T - log p_R per bin, each distribution smoothed with `alpha` pseudo-counts per bin."""
    def log_p(counts: np.ndarray) -> np.ndarray:
        smoothed = np.asarray(counts, np.float64).ravel() + alpha
        return np.log(smoothed) - np.log(smoothed.sum())
    return log_p(target_counts) - log_p(raw_counts)


def log_importance(counts: sparse.csr_matrix, ratio: np.ndarray) -> np.ndarray:
    """Each text's log importance weight: the sum over its features of log p_T - log p_R."""
    return np.asarray(counts @ ratio, np.float64).ravel()


def top_k(keys: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest keys, largest first, ties by position."""
    return np.argsort(-keys, kind="stable")[:k]


def gumbel_top_k(log_w: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of k draws without replacement with probability proportional to exp(log_w), in draw
    order: the k largest of log_w + Gumbel noise (the Gumbel-max trick applied k times at once)."""
    log_w = np.asarray(log_w, np.float64)
    return top_k(log_w + np.random.default_rng(seed).gumbel(size=len(log_w)), k)


def gumbel_keys(seed: int, shard: int, rows: int) -> np.ndarray:
    """The Gumbel noise of a store shard's rows, from that shard's own generator `[seed, shard]`: row r
    of shard s gets the same noise whichever order the shards are read in, and whichever pool."""
    return np.random.default_rng([seed, shard]).gumbel(size=rows)


def candidate_keys(store: EmbeddingStore, ids: np.ndarray, seed: int) -> np.ndarray:
    """The same per-row noise for rows given by id (the candidate pool), shard by shard."""
    noise = np.empty(len(ids))
    sizes = dict(zip(store.shard_indices(), store.row_counts()))
    for index, mask, rows in store.locate(store.id_positions(ids)):
        noise[mask] = gumbel_keys(seed, index, sizes[index])[rows]
    return noise


def shard_raw_counts(store: EmbeddingStore, shard: int, column: str, buckets: int,
                     blocked: np.ndarray) -> dict[str, np.ndarray]:
    """Pass 1 over one shard: its summed n-gram counts (integers, so any summation order gives the
    same total) and how many of its rows are not blocked."""
    meta = store.metadata(shard, [ID, column])
    counts = hashed_ngram_counts(as_texts(meta.column(column), store.chat_template), buckets)
    return {"counts": np.asarray(counts.sum(axis=0)).ravel(),
            "selectable": np.int64((~np.isin(meta.column(ID).to_numpy(), blocked)).sum())}


def shard_draw(store: EmbeddingStore, shard: int, column: str, buckets: int, ratio: np.ndarray, seed: int,
               budget: int, blocked: np.ndarray, candidate_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Pass 2 over one shard: the weights and keys (noise from `[seed, shard]`) of its `budget`
    best rows, largest key first (ties by position), and of its candidate rows. No row outside a
    shard's own top `budget` can be among the corpus's top `budget`, so merging these in shard
    order (`_Draw.merge`) draws exactly what a pass over every row does."""
    meta = store.metadata(shard, [ID, column])
    ids = meta.column(ID).to_numpy().astype(np.int64)
    log_w = log_importance(hashed_ngram_counts(as_texts(meta.column(column), store.chat_template), buckets), ratio)
    key = _keys(ids, log_w, gumbel_keys(seed, shard, len(ids)), blocked)
    best, cand = top_k(key, budget), np.isin(ids, candidate_ids)
    return {"ids": ids[best], "log_w": log_w[best], "key": key[best],
            "cand_ids": ids[cand], "cand_log_w": log_w[cand], "cand_key": key[cand]}


def _keys(ids: np.ndarray, log_w: np.ndarray, noise: np.ndarray, blocked: np.ndarray) -> np.ndarray:
    key = log_w + noise
    key[np.isin(ids, blocked)] = -np.inf
    return key


class _Draw:
    """A running top-`budget` of Gumbel keys over a stream of rows, plus the weights and keys of
    the candidate rows seen on the way (every one is recorded, kept or not). The keys do not depend
    on the order rows arrive in (ties: the earlier arrival)."""

    def __init__(self, budget: int, candidate_ids: np.ndarray):
        self.budget = budget
        self.ids, self.log_w, self.key = np.empty(0, np.int64), np.empty(0), np.empty(0)
        self.cand_ids = candidate_ids
        self.cand_log_w = np.full(len(candidate_ids), np.nan)
        self.cand_key = np.full(len(candidate_ids), -np.inf)

    def add(self, ids: np.ndarray, log_w: np.ndarray, noise: np.ndarray, blocked: np.ndarray) -> None:
        key = _keys(ids, log_w, noise, blocked)
        self.merge(ids, log_w, key, ids, log_w, key)

    def merge(self, ids: np.ndarray, log_w: np.ndarray, key: np.ndarray, cand_ids: np.ndarray,
              cand_log_w: np.ndarray, cand_key: np.ndarray) -> None:
        """Rows (in arrival order) competing for the draw, and the candidate rows among those seen."""
        where = np.isin(self.cand_ids, cand_ids)
        if where.any():
            sorter = np.argsort(cand_ids)
            rows = sorter[np.searchsorted(cand_ids, self.cand_ids[where], sorter=sorter)]
            self.cand_log_w[where], self.cand_key[where] = cand_log_w[rows], cand_key[rows]
        ids, log_w, key = (np.concatenate([a, b]) for a, b in ((self.ids, ids), (self.log_w, log_w), (self.key, key)))
        best = top_k(key, self.budget)
        self.ids, self.log_w, self.key = ids[best], log_w[best], key[best]


class DsirMethod(SelectionMethod):
    name = "dsir"
    OPTIONS = (
        Option("pool", STR, "corpus", "corpus: the whole store, two passes; candidates: the stage-1 pool only",
               choices=("corpus", "candidates")),
        Option("buckets", INT, 10_000, "hash bins of the n-gram features", min=1),
        Option("alpha", FLOAT, 1.0, "pseudo-count per bin smoothing both distributions", above=0),
    )

    def select(self, request: SelectionRequest) -> SelectionResult:
        opts = self.options
        buckets, alpha = opts["buckets"], opts["alpha"]
        store, blocked = request.store, np.asarray(request.blocked_ids, np.int64)
        column = store.info["text_column"]
        cand_ids, cand_query, block_reason = candidate_columns(request.candidates)
        target = np.asarray(hashed_ngram_counts(request.adaptation_texts, buckets).sum(axis=0)).ravel()
        draw = _Draw(request.budget, cand_ids)
        if opts["pool"] == "candidates":
            check_budget(request.budget, int((~np.isin(cand_ids, blocked)).sum()), "the dsir candidate pool")
            counts = hashed_ngram_counts(store.texts_for_ids(cand_ids, column), buckets)
            draw.add(cand_ids, log_importance(counts, log_ratio(target, counts.sum(axis=0), alpha)),
                     candidate_keys(store, cand_ids, request.seed), blocked)
        else:
            scan = {"column": column, "buckets": buckets, "blocked": blocked}
            raw, selectable = np.zeros(buckets), 0
            for _, part in map_shards(shard_raw_counts, store, scan, request.executor, "dsir: n-grams"):  # pass 1: p_R
                raw += part["counts"]
                selectable += int(part["selectable"])
            check_budget(request.budget, selectable, "the corpus")
            scan.update(ratio=log_ratio(target, raw, alpha), seed=request.seed, budget=request.budget,
                        candidate_ids=cand_ids)
            for _, part in map_shards(shard_draw, store, scan, request.executor, "dsir: draw"):  # pass 2: the draw
                draw.merge(part["ids"], part["log_w"], part["key"], part["cand_ids"], part["cand_log_w"],
                           part["cand_key"])
        return self._result(request, draw, cand_ids, cand_query, block_reason, opts["pool"])

    @staticmethod
    def _result(request: SelectionRequest, draw: _Draw, cand_ids: np.ndarray, cand_query: np.ndarray,
                block_reason: list[str | None], pool: str) -> SelectionResult:
        """Rows: the kept rows in draw order, then every candidate that was not kept."""
        others = ~np.isin(cand_ids, draw.ids)
        in_pool = np.isin(draw.ids, cand_ids)
        sorter = np.argsort(cand_ids)
        kept_query = np.full(len(draw.ids), -1, np.int32)
        kept_query[in_pool] = cand_query[sorter[np.searchsorted(cand_ids, draw.ids[in_pool], sorter=sorter)]]
        m, seed = len(draw.ids), request.seed
        ids = np.concatenate([draw.ids, cand_ids[others]])
        log_w = np.concatenate([draw.log_w, draw.cand_log_w[others]])
        key = np.concatenate([draw.key, draw.cand_key[others]])
        blocked = np.isin(ids, request.blocked_ids)
        reasons = [None] * m + [r for r, o in zip(block_reason, others) if o]
        return ranked_result(
            ids, log_w, np.arange(m), np.concatenate([kept_query, cand_query[others]]), blocked, reasons,
            kept_reason=lambda row, pos: (f"kept: importance draw {pos} of {m} from the {pool} "
                                          f"(log weight {log_w[row]:.3f}, seed {seed})"),
            rejected_reason=lambda row: (f"rejected: not drawn (log weight {log_w[row]:.3f}, Gumbel key "
                                         f"{key[row]:.3f} below the {m} drawn from the {pool})"),
            extra={"dsir_key": key})
