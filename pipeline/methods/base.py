"""The interface every selection method shares, and the registry that finds them by name.

A method gets the candidate pool, the store, the adaptation set, the budget m and a seed, and
returns, for every row it considered, a score, a keep/reject decision and the reason.

A method declares its options as `OPTIONS` (`pipeline.options.Option`: name, type, range, default,
help) on its class; they reach it one way, through the constructor, which checks them: an unknown
key or a bad value is an AlbatError, and `self.options` holds every option's value.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from albat.pipeline.options import Option, resolve
from albat.stores.embedding_store import EmbeddingStore
from albat.stores.errors import AlbatError


@dataclass
class SelectionRequest:
    candidates: pa.Table  # one row per unique candidate (see pipeline.query.aggregate_candidates)
    pairs: pa.Table  # every (adaptation example, candidate) pair
    blocked_ids: np.ndarray  # corpus ids no method may select (duplicates of adaptation/eval data)
    store: EmbeddingStore
    adaptation_texts: list[str]
    adaptation_vectors: np.ndarray
    budget: int
    seed: int
    adaptation_pair_vectors: np.ndarray | None = None  # query side of the adaptation pairs, if any
    executor: dict[str, Any] | None = None  # where corpus passes run (pipeline.shard_map); None: here


@dataclass
class SelectionResult:
    ids: np.ndarray  # int64 corpus ids considered
    score: np.ndarray  # float64, higher is better
    keep: np.ndarray  # bool
    reason: list[str]  # why kept or rejected, one line each
    rank: np.ndarray  # int64 selection order of kept rows, -1 for rejected
    query_idx: np.ndarray  # int32 adaptation example that retrieved the row, -1 if none
    weight: np.ndarray | None = None  # per-example weight w_b (default 1)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # method-specific score columns
    report: dict[str, Any] = field(default_factory=dict)  # method-specific summary (timings, thresholds)

    def to_table(self, method: str) -> pa.Table:
        n = len(self.ids)
        columns: dict[str, Any] = {
            "id": pa.array(self.ids, pa.int64()),
            "method": pa.array([method] * n, pa.string()),
            "score": pa.array(self.score, pa.float64()),
            "keep": pa.array(self.keep, pa.bool_()),
            "reason": pa.array(self.reason, pa.string()),
            "selection_rank": pa.array(self.rank, pa.int64()),
            "query_idx": pa.array(self.query_idx, pa.int32()),
            "weight": pa.array(np.ones(n) if self.weight is None else self.weight, pa.float64()),
        }
        for name, values in self.extra.items():
            columns[name] = pa.array(values)
        return pa.table(columns)


class SelectionMethod(ABC):
    name: ClassVar[str]
    uses_candidates: ClassVar[bool] = True
    OPTIONS: ClassVar[tuple[Option, ...]] = ()

    def __init__(self, **options: Any):
        self.options = resolve(self.OPTIONS, options, f"method {self.name}")

    @abstractmethod
    def select(self, request: SelectionRequest) -> SelectionResult:
        """Score and decide every candidate; keep at most `request.budget` rows."""


# name -> "module:Class"; modules are imported only when their method is used.
REGISTRY: dict[str, str] = {
    "none": "albat.pipeline.methods.none_method:NoneMethod",
    "random": "albat.pipeline.methods.random_method:RandomMethod",
    "knn": "albat.pipeline.methods.knn:KnnMethod",
    "dsir": "albat.pipeline.methods.dsir:DsirMethod",
    "classifier": "albat.pipeline.methods.classifier:ClassifierMethod",
    "gradalign": "albat.pipeline.methods.gradalign:GradAlignMethod",
    "albat": "albat.pipeline.methods.albat:AlbatMethod",
    "auto": "albat.pipeline.methods.auto:AutoMethod",
}


def method_class(name: str) -> type[SelectionMethod]:
    if name not in REGISTRY:
        raise AlbatError(f"unknown selection method '{name}'; choose one of {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_method(name: str, **options: Any) -> SelectionMethod:
    return method_class(name)(**options)
