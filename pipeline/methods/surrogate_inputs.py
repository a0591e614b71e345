"""What surrogate-based methods (albat, gradalign) share: the surrogate built from their options
(declared in `pipeline.surrogates.options`), and the examples they score.

`contrastive` scores pairs from the store: the document side is the embedded text column, the
query side the embedded pair column (`embed.pair_column`). A store without a pair column gets two
views of the same example (`pipeline.surrogates.contrastive.two_views`), seeded.
`lm` scores the texts themselves (the store's text column and the adaptation texts), tokenized by
the causal LM given as `model`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from albat.pipeline.methods.base import SelectionMethod, SelectionRequest
from albat.pipeline.methods.ranked import candidate_columns
from albat.pipeline.surrogates.base import surrogate_class
from albat.pipeline.surrogates.options import SURROGATE_OPTIONS
from albat.stores.embedding_store import EmbeddingStore
from albat.stores.errors import AlbatError

def store_pairs(store: EmbeddingStore, ids: np.ndarray, view_sigma: float, seed: int):
    from albat.pipeline.surrogates.contrastive import Pairs, two_views

    doc = store.vectors_for_ids(ids)
    query = store.vectors_for_ids(ids, side="pair") if store.pair_column else two_views(doc, view_sigma, seed)
    return Pairs(query, doc)


def adaptation_pairs(request: SelectionRequest, view_sigma: float):
    from albat.pipeline.surrogates.contrastive import Pairs, two_views

    doc = request.adaptation_vectors.astype(np.float32)
    query = request.adaptation_pair_vectors
    if query is None:
        if request.store.pair_column:
            raise AlbatError("the store has a pair column but the query stage wrote no adaptation pair "
                             "vectors; rerun `albat query`")
        query = two_views(doc, view_sigma, request.seed + 1)
    return Pairs(query.astype(np.float32), doc)


def bank_ids(store: EmbeddingStore, size: int, exclude: np.ndarray, seed: int) -> np.ndarray:
    """A fixed, seeded uniform sample of backbone ids, none of them excluded."""
    rows = int(store.info["rows"])
    rng = np.random.default_rng([seed, 17])
    draw = rng.choice(rows, size=min(rows, size + len(exclude)), replace=False)
    ids = store.ids_at(np.sort(draw))
    return ids[~np.isin(ids, exclude)][:size]


def _contrastive(request: SelectionRequest, opts: dict[str, Any], exclude: np.ndarray):
    cls = surrogate_class("contrastive")
    bank = store_pairs(request.store, bank_ids(request.store, opts["bank_size"], exclude, request.seed),
                       opts["view_sigma"], request.seed + 2)
    surrogate = cls(bank, steps=opts["steps"], lr=opts["lr"], batch_size=opts["batch_size"],
                    holdout_fraction=opts["holdout_fraction"],
                    projection_dim=opts["projection_dim"] or None, projection_seed=request.seed)
    return (surrogate, adaptation_pairs(request, opts["view_sigma"]),
            lambda ids: store_pairs(request.store, ids, opts["view_sigma"], request.seed + 3))


def _lm(request: SelectionRequest, opts: dict[str, Any], exclude: np.ndarray):
    targets = [t.strip() for t in str(opts["target_modules"]).split(",") if t.strip()]
    surrogate = surrogate_class("lm")(
        opts["model"], max_length=opts["max_length"], lora_rank=opts["lora_rank"], lora_alpha=opts["lora_alpha"],
        target_modules=targets or None, steps=opts["steps"], lr=opts["lr"], batch_size=opts["batch_size"],
        holdout_fraction=opts["holdout_fraction"], projection_dim=opts["projection_dim"] or None,
        projection_seed=request.seed, device=opts["device"], seed=request.seed)
    return (surrogate, surrogate.examples(request.adaptation_texts),
            lambda ids: surrogate.examples(request.store.texts_for_ids(ids)))


BUILDERS = {"contrastive": _contrastive, "lm": _lm}


class SurrogateMethod(SelectionMethod):
    """A method that scores with a surrogate: it takes every surrogate option, and `lm` needs a model."""

    OPTIONS = SURROGATE_OPTIONS

    def __init__(self, **options: Any):
        super().__init__(**options)
        if self.options["surrogate"] == "lm" and not self.options["model"]:
            raise AlbatError(f"method {self.name}: surrogate lm needs model=DIR, a local Hugging Face causal-LM "
                             "checkpoint (--surrogate-model DIR or --method-option model=DIR)")


def build_surrogate(request: SelectionRequest, opts: dict[str, Any], exclude: np.ndarray):
    """(surrogate, adaptation examples, ids -> store examples). The contrastive bank is seeded and
    disjoint from `exclude`."""
    return BUILDERS[opts["surrogate"]](request, opts, exclude)


@dataclass
class SurrogatePool:
    """The candidate pool as surrogate methods see it: every candidate row, the selectable ones
    (not blocked) as pairs, and the surrogate with its adaptation pairs."""

    ids: np.ndarray  # every candidate id, in the candidates table's order
    query_idx: np.ndarray
    block_reason: list[str | None]
    rows: np.ndarray  # indices into `ids` of the selectable (unblocked) candidates
    pairs: Any  # the selectable candidates' examples (pairs, or tokens for lm), in `rows` order
    surrogate: Any
    adaptation: Any

    @property
    def blocked(self) -> np.ndarray:
        out = np.ones(len(self.ids), dtype=bool)
        out[self.rows] = False
        return out

    def spread(self, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """Per-selectable-row values as a column over every candidate row (`fill` for blocked ones)."""
        out = np.full(len(self.ids), fill, dtype=np.float64)
        out[self.rows] = values
        return out


def prepare_pool(request: SelectionRequest, opts: dict[str, Any]) -> SurrogatePool:
    ids, query_idx, block_reason = candidate_columns(request.candidates)
    rows = np.nonzero(~np.isin(ids, request.blocked_ids))[0]
    surrogate, adaptation, examples = build_surrogate(request, opts, np.concatenate([request.blocked_ids, ids]))
    return SurrogatePool(ids=ids, query_idx=query_idx, block_reason=block_reason, rows=rows,
                         pairs=examples(ids[rows]), surrogate=surrogate, adaptation=adaptation)
