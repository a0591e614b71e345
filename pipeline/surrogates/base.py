"""The surrogate interface: the small model ALBAT trains on the adaptation set to score candidates.

A surrogate has two parameter states: φ_0, the adapter at initialisation (the adapted model equals
the backbone), and φ_s, the adapter trained on the adaptation set. For a batch of examples it gives
per-example losses, per-example gradients over the adapter parameters (optionally through a seeded
random projection, as in LESS, so memory per example is flat) and a label-free Fisher-trace
curvature estimate. Examples are whatever the surrogate consumes (pairs of cached embeddings for
`contrastive`, token ids for `lm`); `len(examples)` is their count.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, Iterator, Literal

import numpy as np

from albat.stores.errors import AlbatError

State = Literal["initial", "adapted"]  # φ_0 or φ_s


class Surrogate(ABC):
    name: str

    @abstractmethod
    def fit(self, adaptation: Any, seed: int) -> dict[str, Any]:
        """Train φ_s on the adaptation examples; return a small report (steps, held-out loss)."""

    @abstractmethod
    def losses(self, examples: Any, state: State) -> np.ndarray:
        """Per-example loss ℓ(φ; z), shape (n,)."""

    def unit_log_likelihoods(self, examples: Any, state: State) -> np.ndarray:
        """log p_φ(y | x) of each predicted unit of the examples, flat (`albat mix` mixes the experts'
        predictive distributions unit by unit). By default one unit per example: -ℓ(φ; z)."""
        return -self.losses(examples, state)

    def unit_counts(self, examples: Any) -> np.ndarray:
        """How many predicted units each example's loss averages over, shape (n,): its tokens for
        `lm`, 1 by default. `objective=reducible` with `reducible_units=sum` sums the reducible loss
        over them (the log-likelihood ratio of the whole example, as DSIR sums over n-grams)."""
        return np.ones(len(examples))

    @abstractmethod
    def gradients(self, examples: Any, state: State) -> np.ndarray:
        """Per-example ∇_φ ℓ(φ; z), projected to the surrogate's `projection_dim` when it has one: (n, p)."""

    @abstractmethod
    def fisher_trace(self, examples: Any, state: State, samples: int, seed: int,
                     direction: np.ndarray | None = None) -> np.ndarray:
        """Per-example tr F(z) = E_{ŷ~p_φ(·|z)} ‖∇_φ log p_φ(ŷ|z)‖², estimated with `samples` labels: (n,).

        With a unit `direction` u (in the space `gradients` returns): the curvature along it,
        uᵀF(z)u = E (∇ log p(ŷ|z)·u)²."""


def holdout_split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(held-out, train) row indices of a seeded permutation: `fraction` of n held out for early
    stopping, none below 4 examples (too few to spare any)."""
    order = rng.permutation(n)
    n_hold = int(round(fraction * n)) if n >= 4 else 0
    return order[:n_hold], order[n_hold:]


def row_slices(n: int, size: int, per_row: int = 1) -> Iterator[slice]:
    """Consecutive row slices whose work (rows × per_row) stays within `size`."""
    step = max(1, size // per_row)
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


SURROGATES: dict[str, str] = {
    "contrastive": "albat.pipeline.surrogates.contrastive:ContrastiveSurrogate",
    "lm": "albat.pipeline.surrogates.lm:LmSurrogate",
}


def surrogate_class(name: str) -> type[Surrogate]:
    if name not in SURROGATES:
        raise AlbatError(f"unknown surrogate '{name}'; choose one of {', '.join(sorted(SURROGATES))}")
    module, cls = SURROGATES[name].split(":")
    return getattr(importlib.import_module(module), cls)
