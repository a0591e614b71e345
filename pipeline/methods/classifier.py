"""`classifier`: a logistic regression that tells adaptation embeddings from backbone embeddings;
the candidates it finds most adaptation-like are kept.

Why: the embedding-space analogue of DSIR and the usual "quality/domain classifier" filter (as in
GPT-3 and DSIR's own baselines). It asks "does this row look like the target?" with a learnt
direction instead of the nearest-neighbour distance `knn` uses, so it tells whether a learnt
domain score adds anything over plain retrieval.

Positives (label 1) are the adaptation vectors; negatives (label 0) a seeded uniform sample of
store vectors without the blocked rows (duplicates of adaptation data must not be labelled as
backbone), `negatives` rows by default max(10 x n_A, 1000) capped by what the store has. The classes
are weighted to equal total weight, so a sample 10x larger than D_A does not just shift every
score down. Every candidate is scored by its predicted log-odds; the `budget` highest non-blocked
ones are kept, ties broken by the smaller id. Options: `negatives` (0 = the default size), `C`
(inverse L2 strength, 1.0), `draw`: `top` keeps the budget highest (the default), `target` draws
the budget uniformly (seeded) from the rows the balanced model calls target-like (log-odds >= 0) and
fills any shortfall by log-odds: a draw from the target's own part of the pool, like the benchmarks'
oracle, instead of its most typical rows. `pool`: `candidates` (the default) scores the stage-1
candidates; `corpus` scores every store row, shard by shard (here or on Ray Data, memory one shard
deep plus `budget` rows a shard), so the selection is not limited to the neighbourhoods of the
adaptation examples: the classifier, not retrieval, decides what is target-like (with `draw=target`
the uniform draw uses the noise `[seed, 12, shard]`, so the result does not depend on shard order).
`features`: what the regression reads. `embedding` (the default): the stored vectors. `ngrams`: hashed
word unigrams and bigrams (dsir's features, CRC-32 into `buckets` bins), each row's counts scaled to unit
length, the text classifier GPT-3 filtered its corpus with (logistic regression on hashed n-grams);
it sees a source's wording and format, which an embedding of the meaning blurs. `both`: the two side by
side (each block unit length, so neither dominates by scale). `spread` (1: off): keep the budget m from
the spread·m highest log-odds by a greedy that trades typicality for variety: the highest row first,
then each time the row whose summed cosine (on the embeddings) to the rows already kept is least, so
the selection does not collapse onto the classifier's most typical, mutually alike rows (`draw=top` only).
`spread_floor` (-inf: off): the spread picks only among those rows whose log-odds are at least this, never
fewer than the budget. At 0 it spreads only over rows the balanced model calls target-like: where the
target's own kind of text fills the pool the spread·m surest rows all pass and nothing changes; where
it does not, variety is not bought with rows the model itself calls backbone-like.
The lbfgs solver is deterministic, so the seed fixes the result.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from albat.pipeline.methods.base import SelectionMethod, SelectionRequest, SelectionResult
from albat.pipeline.methods.dsir import hashed_ngram_counts
from albat.pipeline.methods.random_method import uniform_draw
from albat.pipeline.methods.ranked import candidate_columns, check_budget, ranked_result, top_scores
from albat.pipeline.options import FLOAT, INT, STR, Option
from albat.pipeline.shard_map import map_shards
from albat.stores.chat import as_texts
from albat.stores.embedding_store import ID, EmbeddingStore
from albat.stores.errors import AlbatError

if TYPE_CHECKING:  # scikit-learn loads when the method runs, not when its options are checked
    from sklearn.linear_model import LogisticRegression


def default_negatives(n_adaptation: int, available: int) -> int:
    """max(10 x n_A, 1000) backbone rows, capped by the rows there are."""
    return min(max(10 * n_adaptation, 1000), available)


def negative_positions(store: EmbeddingStore, blocked_ids: np.ndarray, n_adaptation: int, requested: int,
                       seed: int) -> np.ndarray:
    """Row positions of a seeded uniform sample of unblocked store rows (`requested`, or the default size if 0)."""
    rows = int(store.info["rows"])
    blocked_positions = store.id_positions(np.unique(blocked_ids))
    available = rows - len(blocked_positions)
    size = min(requested, available) or default_negatives(n_adaptation, available)
    if size == 0:
        raise AlbatError("method classifier found no unblocked backbone rows to use as negatives")
    return uniform_draw(rows, size, blocked_positions, seed)


def sample_negatives(store: EmbeddingStore, blocked_ids: np.ndarray, n_adaptation: int, requested: int,
                     seed: int) -> np.ndarray:
    """Vectors of the negative sample (`negative_positions`)."""
    return store.vectors_at(negative_positions(store, blocked_ids, n_adaptation, requested, seed))


FEATURES = ("embedding", "ngrams", "both")
DEFAULT_BUCKETS = 2 ** 18


def ngram_features(texts: list[str | None], buckets: int) -> sparse.csr_matrix:
    """Hashed word unigram and bigram counts (dsir's features), each row scaled to unit length (an
    empty text stays all zero)."""
    counts = hashed_ngram_counts(texts, buckets)
    norms = np.sqrt(np.asarray(counts.multiply(counts).sum(axis=1)).ravel())
    return (sparse.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ counts).tocsr()


def feature_rows(vectors: np.ndarray | None, texts: list[str | None] | None, features: str, buckets: int):
    """The regression's input rows: the embeddings (dense), the n-gram rows (sparse) or both side by side."""
    if features == "embedding":
        return np.asarray(vectors, np.float64)
    grams = ngram_features(texts, buckets)
    return grams if features == "ngrams" else sparse.hstack([sparse.csr_matrix(np.asarray(vectors, np.float64)),
                                                            grams]).tocsr()


def fit_classifier(positives, negatives, C: float, seed: int) -> LogisticRegression:
    """Class-balanced L2 logistic regression, positives labelled 1 (dense arrays or sparse rows)."""
    from sklearn.linear_model import LogisticRegression

    if sparse.issparse(positives):
        x = sparse.vstack([positives, negatives]).tocsr()
    else:
        x = np.concatenate([positives, negatives]).astype(np.float64)
    y = np.concatenate([np.ones(positives.shape[0]), np.zeros(negatives.shape[0])])
    return LogisticRegression(C=C, class_weight="balanced", max_iter=1000, random_state=seed).fit(x, y)


def log_odds(model: LogisticRegression, rows) -> np.ndarray:
    """log P(adaptation | x) / P(backbone | x) under the balanced model."""
    rows = rows if sparse.issparse(rows) else np.asarray(rows, np.float64)
    return np.asarray(model.decision_function(rows), np.float64)


def spread_picks(vectors: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy variety among rows given best first: row 0, then each time the row whose summed cosine to
    the rows already picked is least (ties: the earlier, better row). Returns the picked indices in
    pick order and each one's summed cosine to the earlier picks (0 for the first)."""
    vectors = np.asarray(vectors, np.float64)
    n, m = len(vectors), min(m, len(vectors))
    picked, cost = np.empty(m, np.int64), np.zeros(m)
    if m == 0:
        return picked, cost
    total = np.zeros(n)
    free = np.ones(n, bool)
    for step in range(m):
        j = int(np.argmin(np.where(free, total, np.inf))) if step else 0
        picked[step], cost[step], free[j] = j, total[j], False
        total += vectors @ vectors[j]
    return picked, cost


def spread_pool(score_desc: np.ndarray, budget: int, floor: float) -> int:
    """How many of the rows ranked best first (their log-odds `score_desc`, highest first) the spread
    picks among: those at or above `floor`, never fewer than the budget nor more than there are."""
    above = int(np.count_nonzero(np.asarray(score_desc, np.float64) >= floor))
    return min(len(score_desc), max(budget, above))


def spread_note(cost: float | None, spread: int) -> str:
    """What a kept row's reason adds when it was a spread pick (nothing otherwise)."""
    return "" if cost is None else f", summed cosine {cost:.3f} to the earlier picks (spread {spread})"


def passed_over_reason(score: float, considered: int, where: str, spread: int) -> str:
    """The reason of a row among the `considered` surest that the spread picks passed over."""
    return (f"rejected: classifier log-odds {score:.3f}, among the {considered} highest{where} but more alike to the "
            f"picks than those kept (spread {spread})")


def target_draw(score: np.ndarray, ids: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """Positions of `budget` rows: a seeded uniform draw among those with score >= 0 (in id order before
    the shuffle, so the input order does not matter), then the highest scores below 0 if too few."""
    by_id = np.argsort(ids, kind="stable")
    target = by_id[score[by_id] >= 0]
    drawn = target[np.random.default_rng([seed, 12]).permutation(len(target))][:budget]
    rest = by_id[score[by_id] < 0]
    fill = rest[top_scores(score[rest], ids[rest], budget - len(drawn))] if budget > len(drawn) else rest[:0]
    return np.concatenate([drawn, fill]).astype(np.int64)


TARGET_KEY = 1e6  # draw=target over the corpus: a target row's key is this plus a uniform draw, above any log-odds


def corpus_keys(score: np.ndarray, noise: np.ndarray, draw: str) -> np.ndarray:
    """The key the corpus pool ranks rows by: the log-odds (`top`), or (`target`) TARGET_KEY + a
    uniform draw for rows with log-odds >= 0 and the log-odds below, so the top `budget` keys are a
    uniform draw among the target-like rows, filled by the highest log-odds below 0."""
    if draw == "top":
        return np.asarray(score, np.float64)
    return np.where(score >= 0, TARGET_KEY + noise, np.minimum(score, 0.0))


def shard_scores(store: EmbeddingStore, shard: int, coef: np.ndarray, intercept: float, draw: str, seed: int,
                 budget: int, blocked: np.ndarray, candidate_ids: np.ndarray, features: str = "embedding",
                 buckets: int = DEFAULT_BUCKETS, column: str | None = None) -> dict[str, np.ndarray]:
    """One shard of the corpus pool: the `budget` rows of highest key (ties to the lower id; blocked
    rows never), and the log-odds of the candidates it holds. No row outside a shard's own top can be
    among the corpus's, so merging the shards' tops gives the corpus's whichever order they come in."""
    meta = store.metadata(shard, [ID] if column is None else [ID, column])
    ids = meta.column(ID).to_numpy().astype(np.int64)
    texts = None if column is None else as_texts(meta.column(column), store.chat_template)
    vectors = None if features == "ngrams" else store.vectors(shard)
    score = np.asarray(feature_rows(vectors, texts, features, buckets) @ coef, np.float64).ravel() + intercept
    noise = np.random.default_rng([seed, 12, shard]).random(len(ids))
    key = corpus_keys(score, noise, draw)
    key[np.isin(ids, blocked)] = -np.inf
    best = top_scores(key, ids, budget)
    best = best[np.isfinite(key[best])]
    cand = np.isin(ids, candidate_ids)
    return {"ids": ids[best], "score": score[best], "key": key[best], "cand_ids": ids[cand], "cand_score": score[cand]}


def text_column(store: EmbeddingStore, features: str) -> str | None:
    """The column the n-gram features read (None for features=embedding)."""
    if features == "embedding":
        return None
    column = store.info.get("text_column")
    if not column:
        raise AlbatError(f"method classifier features={features} reads texts, and this store has no text column; "
                         "use features=embedding")
    return column


class ClassifierMethod(SelectionMethod):
    name = "classifier"
    OPTIONS = (
        Option("negatives", INT, 0, "backbone rows sampled as negatives (0: max(10 x n_A, 1000))", min=0),
        Option("C", FLOAT, 1.0, "inverse L2 regularisation strength", above=0),
        Option("draw", STR, "top", "top (the budget highest log-odds) or target (a seeded uniform draw among "
               "the rows with log-odds >= 0, the shortfall filled by log-odds)", choices=("top", "target")),
        Option("pool", STR, "candidates", "candidates: the stage-1 candidates; corpus: every store row, shard by "
               "shard", choices=("candidates", "corpus")),
        Option("features", STR, "embedding", "embedding: the stored vectors; ngrams: hashed word uni- and bigrams "
               "of the texts; both: the two side by side", choices=FEATURES),
        Option("buckets", INT, DEFAULT_BUCKETS, "hash bins of the n-gram features", min=1),
        Option("spread", INT, 1, "keep the budget from the spread x budget highest by least summed cosine to the "
               "rows kept so far (1: off; draw=top only)", min=1),
        Option("spread_floor", FLOAT, float("-inf"), "spread only among rows with log-odds at least this, never "
               "fewer than the budget (0: rows the model calls target-like; -inf: no floor)", inf=True),
    )

    def select(self, request: SelectionRequest) -> SelectionResult:
        opts = self.options
        if opts["spread"] > 1 and opts["draw"] != "top":
            raise AlbatError(f"method classifier: spread={opts['spread']} works with draw=top only; set spread=1 "
                             "or draw=top")
        if opts["spread"] == 1 and opts["spread_floor"] != float("-inf"):
            raise AlbatError(f"method classifier: spread_floor={opts['spread_floor']:g} bounds the spread picks; set "
                             "spread to 2 or more, or leave spread_floor out")
        positives = np.asarray(request.adaptation_vectors)
        if len(positives) == 0:
            raise AlbatError("method classifier needs adaptation examples to train on; the adaptation set is empty")
        store, features, buckets = request.store, opts["features"], opts["buckets"]
        column = text_column(store, features)
        ids, query_idx, block_reason = candidate_columns(request.candidates)
        blocked = np.isin(ids, request.blocked_ids)
        if opts["pool"] == "corpus":
            selectable = int(store.info["rows"]) - len(np.unique(request.blocked_ids))
            check_budget(request.budget, selectable, "the corpus")
        else:
            check_budget(request.budget, int((~blocked).sum()), "the candidate pool (raise query.k)")
        negatives = negative_positions(store, request.blocked_ids, len(positives), opts["negatives"], request.seed)

        def rows_of(vectors: np.ndarray, texts: list[str] | None):
            return feature_rows(vectors, texts, features, buckets)

        def texts_of(row_ids: np.ndarray) -> list[str] | None:
            return None if column is None else store.texts_for_ids(row_ids, column)

        model = fit_classifier(rows_of(positives, request.adaptation_texts),
                               rows_of(store.vectors_at(negatives),
                                       None if column is None else store.texts_at(negatives, column)),
                               opts["C"], request.seed)
        if opts["pool"] == "corpus":
            return self._select_corpus(request, model, len(negatives), ids, query_idx, block_reason, column)
        score = log_odds(model, rows_of(store.vectors_for_ids(ids), texts_of(ids))) if len(ids) else np.zeros(0)
        open_rows = np.nonzero(~blocked)[0]
        if opts["draw"] == "target":
            ranked = open_rows[target_draw(score[open_rows], ids[open_rows], request.budget, request.seed)]
        else:
            ranked = open_rows[top_scores(score[open_rows], ids[open_rows], opts["spread"] * request.budget)]
        chosen, cost, pool = self._spread(store, ids, ranked, score[ranked], request.budget)
        passed_over = set(pool.tolist()) - set(chosen.tolist()) if cost else set()
        m, n_neg, seed, spread = len(chosen), len(negatives), request.seed, opts["spread"]
        cut = f"lowest kept {score[chosen].min():.3f}" if m else "budget 0"
        if opts["draw"] == "target":
            n_target = int((score[open_rows] >= 0).sum())
            cut = f"a seeded draw of {min(m, n_target)} of the {n_target} rows with log-odds >= 0"

        def rejected_reason(row: int) -> str:
            if opts["draw"] == "target":
                return f"rejected: classifier log-odds {score[row]:.3f}, not drawn ({cut})"
            if row in passed_over:
                return passed_over_reason(score[row], len(pool), "", spread)
            if spread > 1 and score[row] < opts["spread_floor"]:
                return (f"rejected: classifier log-odds {score[row]:.3f} below the spread floor "
                        f"{opts['spread_floor']:g} and the {m} kept ({cut})")
            return f"rejected: classifier log-odds {score[row]:.3f} below the {m} kept ({cut})"

        return ranked_result(
            ids, score, chosen, query_idx, blocked, block_reason,
            kept_reason=lambda row, pos: (f"kept: classifier log-odds {score[row]:.3f}, rank {pos} of {m} "
                                          f"({n_neg} negatives, {self._features_note()}seed {seed}"
                                          f"{spread_note(cost.get(row), spread)})"),
            rejected_reason=rejected_reason)

    def _features_note(self) -> str:
        features = self.options["features"]
        return "" if features == "embedding" else f"features {features}, "

    def _spread(self, store: EmbeddingStore, ids: np.ndarray, ranked: np.ndarray, ranked_score: np.ndarray,
                budget: int) -> tuple[np.ndarray, dict[int, float], np.ndarray]:
        """`ranked` (rows, best first; their log-odds `ranked_score`) cut to the budget: the first `budget`
        (spread 1, or too few rows to choose among), or the spread picks among the rows at or above
        `spread_floor` (`spread_pool`). Returns the kept rows, each spread pick's summed cosine to the earlier
        ones (empty when nothing was spread) and the rows the picks chose among."""
        if self.options["spread"] == 1:
            return ranked[:budget], {}, ranked[:budget]
        pool = ranked[:spread_pool(ranked_score, budget, self.options["spread_floor"])]
        if len(pool) <= budget:
            return pool[:budget], {}, pool
        picks, cost = spread_picks(store.vectors_for_ids(ids[pool]), budget)
        return pool[picks], dict(zip(pool[picks].tolist(), cost.tolist())), pool

    def _select_corpus(self, request: SelectionRequest, model: LogisticRegression, n_neg: int, cand_ids: np.ndarray,
                       cand_query: np.ndarray, block_reason: list[str | None], column: str | None) -> SelectionResult:
        """pool=corpus: the budget best keys over every store row. Rows: the kept ones in rank order,
        then every candidate not kept (with its log-odds), as dsir's corpus pool does."""
        draw, budget, seed, spread = self.options["draw"], request.budget, request.seed, self.options["spread"]
        scan = {"coef": model.coef_.ravel().astype(np.float64), "intercept": float(model.intercept_[0]), "draw": draw,
                "seed": seed, "budget": spread * budget, "blocked": np.asarray(request.blocked_ids, np.int64),
                "candidate_ids": cand_ids, "features": self.options["features"], "buckets": self.options["buckets"],
                "column": column}
        parts = [part for _, part in map_shards(shard_scores, request.store, scan, request.executor,
                                                "classifier: corpus")]
        top_ids, top_score, top_key = (np.concatenate([p[k] for p in parts]) for k in ("ids", "score", "key"))
        best = top_scores(top_key, top_ids, spread * budget)
        top_ids, top_score = top_ids[best], top_score[best]
        order, cost, pool = self._spread(request.store, top_ids, np.arange(len(top_ids)), top_score, budget)
        passed_over_ids = top_ids[np.setdiff1d(pool, order)]  # among those the spread chose from, not kept
        kept_ids, kept_score = top_ids[order], top_score[order]
        cand_score = np.full(len(cand_ids), np.nan)
        sorter = np.argsort(cand_ids)
        for part in parts:
            cand_score[sorter[np.searchsorted(cand_ids, part["cand_ids"], sorter=sorter)]] = part["cand_score"]
        others = ~np.isin(cand_ids, kept_ids)
        in_pool = np.isin(kept_ids, cand_ids)
        kept_query = np.full(len(kept_ids), -1, np.int32)
        kept_query[in_pool] = cand_query[sorter[np.searchsorted(cand_ids, kept_ids[in_pool], sorter=sorter)]]
        ids = np.concatenate([kept_ids, cand_ids[others]])
        score = np.concatenate([kept_score, cand_score[others]])
        m = len(kept_ids)
        kept_cost = {row: cost[pos] for row, pos in enumerate(order.tolist()) if pos in cost}  # by result row
        passed_over = set(np.nonzero(np.isin(ids, passed_over_ids))[0].tolist())
        cut = ("a seeded draw among the corpus rows with log-odds >= 0" if draw == "target"
               else f"lowest kept {kept_score.min():.3f}" if m else "budget 0")

        def kept_reason(row: int, pos: int) -> str:
            return (f"kept: classifier log-odds {score[row]:.3f}, rank {pos} of {m} over the corpus ({n_neg} negatives, "
                    f"{self._features_note()}seed {seed}{spread_note(kept_cost.get(row), spread)})")

        def rejected_reason(row: int) -> str:
            if row in passed_over:
                return passed_over_reason(score[row], len(pool), " of the corpus", spread)
            return (f"rejected: classifier log-odds {score[row]:.3f}, not among the {m} kept from the corpus ({cut})")

        return ranked_result(
            ids, score, np.arange(m), np.concatenate([kept_query, cand_query[others]]), np.isin(ids, request.blocked_ids),
            [None] * m + [r for r, o in zip(block_reason, others) if o], kept_reason=kept_reason,
            rejected_reason=rejected_reason)

