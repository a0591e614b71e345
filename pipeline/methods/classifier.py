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
oracle, instead of its most typical rows. The lbfgs solver is deterministic, so the seed fixes the result.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from albat.pipeline.methods.base import SelectionMethod, SelectionRequest, SelectionResult
from albat.pipeline.methods.random_method import uniform_draw
from albat.pipeline.methods.ranked import candidate_columns, check_budget, ranked_result, top_scores
from albat.pipeline.options import FLOAT, INT, STR, Option
from albat.stores.embedding_store import EmbeddingStore
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


class ClassifierMethod(SelectionMethod):
    name = "classifier"
    OPTIONS = (
        Option("negatives", INT, 0, "backbone rows sampled as negatives (0: max(10 x n_A, 1000))", min=0),
        Option("C", FLOAT, 1.0, "inverse L2 regularisation strength", above=0),
        Option("draw", STR, "top", "top (the budget highest log-odds) or target (a seeded uniform draw among "
               "the rows with log-odds >= 0, the shortfall filled by log-odds)", choices=("top", "target")),
    )

    def select(self, request: SelectionRequest) -> SelectionResult:
        opts = self.options
        positives = np.asarray(request.adaptation_vectors)
        if len(positives) == 0:
            raise AlbatError("method classifier needs adaptation examples to train on; the adaptation set is empty")
        ids, query_idx, block_reason = candidate_columns(request.candidates)
        blocked = np.isin(ids, request.blocked_ids)
        check_budget(request.budget, int((~blocked).sum()), "the candidate pool (raise query.k)")
        negatives = sample_negatives(request.store, request.blocked_ids, len(positives), opts["negatives"], request.seed)
        model = fit_classifier(positives, negatives, opts["C"], request.seed)
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
