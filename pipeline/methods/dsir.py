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
then the weights with a running top-`budget`, so memory stays one shard deep) or "candidates" (the
stage-1 pool only); `buckets` (10,000); `alpha` (1.0). Blocked ids are never drawn. The result holds
the kept rows plus every candidate; `score` is the log weight and `dsir_key` the Gumbel-perturbed key
that decided the draw (the kept rows have the `budget` largest keys).
"""
from __future__ import annotations

import re
import zlib
from typing import Iterator, Sequence

import numpy as np
from scipy import sparse

from pipeline.methods.base import SelectionMethod, SelectionRequest, SelectionResult
from pipeline.methods.ranked import candidate_columns, check_budget, ranked_result
from pipeline.options import FLOAT, INT, STR, Option
from stores.embedding_store import ID, EmbeddingStore

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


def _shards(store: EmbeddingStore, column: str) -> Iterator[tuple[int, np.ndarray, list[str]]]:
    for index in store.shard_indices():
        meta = store.metadata(index, [ID, column])
        yield index, meta.column(ID).to_numpy(), meta.column(column).to_pylist()


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
        key = log_w + noise
        key[np.isin(ids, blocked)] = -np.inf
        where = np.isin(self.cand_ids, ids)
        if where.any():
            sorter = np.argsort(ids)
            rows = sorter[np.searchsorted(ids, self.cand_ids[where], sorter=sorter)]
            self.cand_log_w[where], self.cand_key[where] = log_w[rows], key[rows]
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
            raw, selectable = np.zeros(buckets), 0
            for _, ids, texts in _shards(store, column):  # pass 1: the raw distribution
                raw += np.asarray(hashed_ngram_counts(texts, buckets).sum(axis=0)).ravel()
                selectable += int((~np.isin(ids, blocked)).sum())
            check_budget(request.budget, selectable, "the corpus")
            ratio = log_ratio(target, raw, alpha)
            for index, ids, texts in _shards(store, column):  # pass 2: weights and the draw, per-shard noise
                draw.add(ids, log_importance(hashed_ngram_counts(texts, buckets), ratio),
                         gumbel_keys(request.seed, index, len(ids)), blocked)
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
