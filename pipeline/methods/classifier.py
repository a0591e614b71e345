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
The lbfgs solver is deterministic, so the seed fixes the result.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from albat.pipeline.methods.base import SelectionMethod, SelectionRequest, SelectionResult
from albat.pipeline.methods.random_method import uniform_draw
from albat.pipeline.methods.ranked import candidate_columns, check_budget, ranked_result, top_scores
from albat.pipeline.options import FLOAT, INT, STR, Option
from albat.pipeline.shard_map import map_shards
from albat.stores.embedding_store import ID, EmbeddingStore
from albat.stores.errors import AlbatError

if TYPE_CHECKING:  # scikit-learn loads when the method runs, not when its options are checked
    from sklearn.linear_model import LogisticRegression


def default_negatives(n_adaptation: int, available: int) -> int:
    """max(10 x n_A, 1000) backbone rows, capped by the rows there are."""
    return min(max(10 * n_adaptation, 1000), available)


def sample_negatives(store: EmbeddingStore, blocked_ids: np.ndarray, n_adaptation: int, requested: int,
                     seed: int) -> np.ndarray:
    """Vectors of a seeded uniform sample of unblocked store rows (`requested`, or the default size if 0)."""
    rows = int(store.info["rows"])
    blocked_positions = store.id_positions(np.unique(blocked_ids))
    available = rows - len(blocked_positions)
    size = min(requested, available) or default_negatives(n_adaptation, available)
    if size == 0:
        raise AlbatError("method classifier found no unblocked backbone rows to use as negatives")
    return store.vectors_at(uniform_draw(rows, size, blocked_positions, seed))


def fit_classifier(positives: np.ndarray, negatives: np.ndarray, C: float, seed: int) -> LogisticRegression:
    """Class-balanced L2 logistic regression, positives labelled 1."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([positives, negatives]).astype(np.float64)
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    return LogisticRegression(C=C, class_weight="balanced", max_iter=1000, random_state=seed).fit(x, y)


def log_odds(model: LogisticRegression, vectors: np.ndarray) -> np.ndarray:
    """log P(adaptation | x) / P(backbone | x) under the balanced model."""
    return model.decision_function(np.asarray(vectors, np.float64)).astype(np.float64)


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
                 budget: int, blocked: np.ndarray, candidate_ids: np.ndarray) -> dict[str, np.ndarray]:
    """One shard of the corpus pool: the `budget` rows of highest key (ties to the lower id; blocked
    rows never), and the log-odds of the candidates it holds. No row outside a shard's own top can be
    among the corpus's, so merging the shards' tops gives the corpus's whichever order they come in."""
    ids = store.metadata(shard, [ID]).column(ID).to_numpy().astype(np.int64)
    score = np.asarray(store.vectors(shard), np.float64) @ coef + intercept
    noise = np.random.default_rng([seed, 12, shard]).random(len(ids))
    key = corpus_keys(score, noise, draw)
    key[np.isin(ids, blocked)] = -np.inf
    best = top_scores(key, ids, budget)
    best = best[np.isfinite(key[best])]
    cand = np.isin(ids, candidate_ids)
    return {"ids": ids[best], "score": score[best], "key": key[best], "cand_ids": ids[cand], "cand_score": score[cand]}


class ClassifierMethod(SelectionMethod):
    name = "classifier"
    OPTIONS = (
        Option("negatives", INT, 0, "backbone rows sampled as negatives (0: max(10 x n_A, 1000))", min=0),
        Option("C", FLOAT, 1.0, "inverse L2 regularisation strength", above=0),
        Option("draw", STR, "top", "top (the budget highest log-odds) or target (a seeded uniform draw among "
               "the rows with log-odds >= 0, the shortfall filled by log-odds)", choices=("top", "target")),
        Option("pool", STR, "candidates", "candidates: the stage-1 candidates; corpus: every store row, shard by "
               "shard", choices=("candidates", "corpus")),
    )

    def select(self, request: SelectionRequest) -> SelectionResult:
        opts = self.options
        positives = np.asarray(request.adaptation_vectors)
        if len(positives) == 0:
            raise AlbatError("method classifier needs adaptation examples to train on; the adaptation set is empty")
        ids, query_idx, block_reason = candidate_columns(request.candidates)
        blocked = np.isin(ids, request.blocked_ids)
        if opts["pool"] == "corpus":
            selectable = int(request.store.info["rows"]) - len(np.unique(request.blocked_ids))
            check_budget(request.budget, selectable, "the corpus")
        else:
            check_budget(request.budget, int((~blocked).sum()), "the candidate pool (raise query.k)")
        negatives = sample_negatives(request.store, request.blocked_ids, len(positives), opts["negatives"], request.seed)
        model = fit_classifier(positives, negatives, opts["C"], request.seed)
        if opts["pool"] == "corpus":
            return self._select_corpus(request, model, len(negatives), ids, query_idx, block_reason)
        score = log_odds(model, request.store.vectors_for_ids(ids)) if len(ids) else np.zeros(0)
        open_rows = np.nonzero(~blocked)[0]
        if opts["draw"] == "target":
            chosen = open_rows[target_draw(score[open_rows], ids[open_rows], request.budget, request.seed)]
        else:
            chosen = open_rows[top_scores(score[open_rows], ids[open_rows], request.budget)]
        m, n_neg, seed = len(chosen), len(negatives), request.seed
        cut = f"lowest kept {score[chosen].min():.3f}" if m else "budget 0"
        if opts["draw"] == "target":
            n_target = int((score[open_rows] >= 0).sum())
            cut = f"a seeded draw of {min(m, n_target)} of the {n_target} rows with log-odds >= 0"
        return ranked_result(
            ids, score, chosen, query_idx, blocked, block_reason,
            kept_reason=lambda row, pos: (f"kept: classifier log-odds {score[row]:.3f}, rank {pos} of {m} "
                                          f"({n_neg} negatives, seed {seed})"),
            rejected_reason=(lambda row: f"rejected: classifier log-odds {score[row]:.3f}, not drawn ({cut})")
            if opts["draw"] == "target" else
            (lambda row: f"rejected: classifier log-odds {score[row]:.3f} below the {m} kept ({cut})"))

    def _select_corpus(self, request: SelectionRequest, model: LogisticRegression, n_neg: int, cand_ids: np.ndarray,
                       cand_query: np.ndarray, block_reason: list[str | None]) -> SelectionResult:
        """pool=corpus: the budget best keys over every store row. Rows: the kept ones in rank order,
        then every candidate not kept (with its log-odds), as dsir's corpus pool does."""
        draw, budget, seed = self.options["draw"], request.budget, request.seed
        scan = {"coef": model.coef_.ravel().astype(np.float64), "intercept": float(model.intercept_[0]), "draw": draw,
                "seed": seed, "budget": budget, "blocked": np.asarray(request.blocked_ids, np.int64),
                "candidate_ids": cand_ids}
        parts = [part for _, part in map_shards(shard_scores, request.store, scan, request.executor,
                                                "classifier: corpus")]
        top_ids, top_score, top_key = (np.concatenate([p[k] for p in parts]) for k in ("ids", "score", "key"))
        best = top_scores(top_key, top_ids, budget)
        kept_ids, kept_score = top_ids[best], top_score[best]
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
        cut = ("a seeded draw among the corpus rows with log-odds >= 0" if draw == "target"
               else f"lowest kept {kept_score.min():.3f}" if m else "budget 0")
        return ranked_result(
            ids, score, np.arange(m), np.concatenate([kept_query, cand_query[others]]), np.isin(ids, request.blocked_ids),
            [None] * m + [r for r, o in zip(block_reason, others) if o],
            kept_reason=lambda row, pos: (f"kept: classifier log-odds {score[row]:.3f}, rank {pos} of {m} over the "
                                          f"corpus ({n_neg} negatives, seed {seed})"),
            rejected_reason=lambda row: (f"rejected: classifier log-odds {score[row]:.3f}, not among the {m} kept "
                                         f"from the corpus ({cut})"))
