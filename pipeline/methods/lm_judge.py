"""`auto`'s `judge=lm`: the fold judge is the causal language model the user will adapt.

The contrastive judge (auto.Judge) is a residual adapter on the store's sentence embeddings: cheap,
and the same class as a contrastive adapted model, but not a language model. On the language-model
benchmark the question that matters is one it cannot answer: does training the LM's LoRA on the
adaptation texts plus the selection (weighted as `albat emit` weighs it) lower the held-out
perplexity of the target, and at which weight λ (BENCHMARKS.md, `lm-lambda`: λ = 4 beats λ = 1 on
every in-pool target; on a target outside the pool every λ > 0 loses to the adaptation set alone).

    score(train, held, kept, λ) = − log perplexity of the held-out fold's texts under
        LoRA(s AdamW steps of batch b on the fold's r rows: the training fold's texts with weight 1
             each and the kept backbone rows with weight λ·n_train/|kept| each)
                                                                      (pipeline/surrogates/lora_train.py)

Set `judge_steps` (S) and `judge_batch_size` (b) to what the real training will use. A fold holds
n_train = (1 − 1/folds)·n_A of the adaptation texts and a budget scaled the same way, so the real run of
the same arm has R = r·n_A/n_train rows. The fold's fit makes as many passes over its rows as that run
will (`fit_steps`, `fold_scale=passes`, the default); a step passes over min(b, rows) rows, since a batch
cannot hold more rows than there are:

    passes = S · min(b, R) / R,        s = round(passes · r / min(b, r))

With more rows than the batch on both sides this is s = S·n_train/n_A. When the real arm fits in one
batch (the adaptation set alone on a few texts) it is s = S: every step is full-batch on both sides and
the fold-alone arm overfits as fast as the real one will.

Rejected, with numbers (docs/albat-design.md round twelve):
    fold_scale=steps: s = round(S·n_train/n_A) for every arm (round eleven's judge). On a few texts the
        fold-alone arm made a third fewer full-batch steps than the real run, was caught before it
        overfits, and λ = 0 won where adding rows is better (fortunes_de at n_A = 16: +90 perplexity
        against random). Kept as an option: it reproduces round eleven.
    s = S at batch round(b·n_train/n_A): as many steps and passes as the real run, but a smaller batch
        overfits the fold-alone arm sooner, and λ = 1 won on vera at n_A = 64, where the adaptation set
        alone is better (seed 0: 166.7 against 158.3 perplexity).
    s = S at batch b (no scaling): each row is seen more often than in the real run; λ = 1 won on vera
        at n_A = 64 (round eleven).

auto's `stop_after` (default 2) ends the folds once one λ beats the others on every fold so far: on the
benchmark (docs/albat-design.md round fourteen) 15 of 21 selections stopped after 2 of 3 folds, every one
chose the full judge's λ, and a selection cost 4.3x one training run instead of 5.9x (n_A = 16). With
`drop_z` (3 for judge=lm) the folds are a race on the per-text scores `row_scores` returns: 3.3x, the same
choices in 21 of 21 runs.

λ = 0, or nothing kept, is training on the fold alone: one fit per fold, shared by every method and
budget (fits are cached by (train rows, kept ids, λ)). Every fit starts from the same seeded LoRA
initialisation and batch order, so the arms of one fold are paired. The backbone checkpoint is
loaded once; each fit's adapter is removed again (peft's `unload`) before the next one.

`judge_layers=k` (0, the default, is the exact fit above): LoRA on the top k decoder layers only, on
inputs of layer L−k computed once per text and cached (pipeline/surrogates/lm_top.py), so a step costs
the top layers and the head instead of the whole model. A cheaper, less faithful judge: the real run
adapts every layer. The cache holds rows × tokens × hidden floats. Measured on the benchmark's 4-layer LM
(docs/albat-design.md round thirteen): k = 1 costs 2.8x one training run instead of 5.9x and chose the
full judge's λ in the pool and on vera, but λ = 0 on German fortunes at n_A = 16 (the top layer cannot use
English rows to adapt to German; +90 perplexity against random). So it is not the default.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from albat.pipeline.methods.base import SelectionRequest


def fold_steps(judge_steps: int, n_train: int, n: int) -> int:
    """Training steps of a fold's fit: `judge_steps` scaled to the fold's share of the adaptation set
    (at least 1), so each row is seen as often as in `judge_steps` steps on all n."""
    return max(1, int(round(judge_steps * n_train / n)))


def fit_steps(judge_steps: int, batch_size: int, rows: int, n_train: int, n: int, scale: str = "passes") -> int:
    """Training steps of a fold's fit on `rows` rows (n_train of the n adaptation texts plus the kept
    backbone rows), at the real run's batch. `passes`: as many passes over the rows as the real run of
    the same arm (rows·n/n_train rows, `judge_steps` steps) makes, a step passing over min(batch, rows)
    rows; `steps`: `fold_steps`, the steps scaled to the fold's share whatever the rows."""
    if scale == "steps":
        return fold_steps(judge_steps, n_train, n)
    if scale != "passes":
        raise ValueError(f"fold_scale={scale!r}: choose passes or steps")
    real = rows * n / n_train
    passes = judge_steps * min(batch_size, real) / real
    return max(1, int(round(passes * rows / min(batch_size, rows))))


def judge_weights(n_train: int, n_kept: int, lam: float) -> np.ndarray:
    """Row weights of one fit: the training fold's texts 1 each, the kept rows λ·n_train/n_kept each
    (emit's weighting, pipeline/emit.backbone_weights with w_b = 1); none when λ = 0."""
    from albat.pipeline.emit import backbone_weights

    kept = backbone_weights(np.ones(n_kept), n_train, lam) if lam > 0 else np.zeros(0)
    return np.concatenate([np.ones(n_train), kept])


class LmJudge:
    """Same interface as auto.Judge: `score(train, held, kept, lam) -> (score, score)`."""

    def __init__(self, request: SelectionRequest, opts: dict[str, Any]):
        from albat.pipeline.surrogates.lm import load_causal_lm

        self.base, self.tokenizer = load_causal_lm(opts["model"], opts["device"])
        self.texts = list(request.adaptation_texts)
        self.store, self.opts, self.seed = request.store, opts, request.seed
        self.cache: dict[tuple, float] = {}
        self.rows: dict[tuple, np.ndarray] = {}  # minus each held-out text's mean NLL, per fit (auto's drop_z)
        self.fits = 0
        self.layers = opts["judge_layers"]
        self.top = self.states = None
        if self.layers:
            from albat.pipeline.surrogates.lm import tokenize
            from albat.pipeline.surrogates.lm_top import StateCache, check_cut, top_model

            self.top = top_model(self.base, self.layers)
            probe = tokenize(self.tokenizer, self.texts[:2], opts["max_length"])
            device = next(self.base.parameters()).device
            check_cut(self.base, self.top, self.layers, *probe.batch(slice(None), device))
            self.states = StateCache(self.base, self.tokenizer, self.layers, opts["max_length"])

    @staticmethod
    def _arm(train: np.ndarray, held: np.ndarray, kept: np.ndarray, lam: float) -> tuple[np.ndarray, tuple]:
        """The kept ids as a fit uses them (sorted; none at λ = 0) and the fit's cache key."""
        kept = np.sort(np.asarray(kept, np.int64)) if lam > 0 else np.zeros(0, np.int64)
        return kept, (tuple(int(i) for i in train), tuple(int(i) for i in held), kept.tobytes(),
                      float(lam) if len(kept) else 0.0)

    def score(self, train: np.ndarray, held: np.ndarray, kept: np.ndarray, lam: float) -> tuple[float, float]:
        kept, key = self._arm(train, held, kept, lam)
        if key not in self.cache:
            self.cache[key], self.rows[key] = self._fit_and_score(train, held, kept, lam)
        value = self.cache[key]
        return value, value

    def row_scores(self, train: np.ndarray, held: np.ndarray, kept: np.ndarray, lam: float) -> np.ndarray:
        """Minus each held-out text's mean next-token NLL under the fit `score` made for these arguments."""
        return self.rows[self._arm(train, held, kept, lam)[1]]

    def _fit_and_score(self, train: np.ndarray, held: np.ndarray, kept: np.ndarray, lam: float
                       ) -> tuple[float, np.ndarray]:
        from albat.pipeline.surrogates.lora_train import perplexity, train_lora

        opts = self.opts
        texts = [self.texts[i] for i in train] + (self.store.texts_for_ids(kept) if len(kept) else [])
        weights = judge_weights(len(train), len(kept), lam)
        targets = [t for t in str(opts["target_modules"]).split(",") if t] or None
        steps = fit_steps(opts["judge_steps"], opts["judge_batch_size"], len(texts), len(train), len(self.texts),
                          opts["fold_scale"])
        held_texts = [self.texts[i] for i in held]
        fit_states = held_states = None
        if self.layers:  # the cut model on cached layer inputs: train rows keyed by source and id
            keys = [("a", int(i)) for i in train] + [("s", int(i)) for i in kept]
            fit_states = self._cached(keys, texts)
            held_states = self._cached([("a", int(i)) for i in held], held_texts)
        model, tokenizer, _ = train_lora(None, texts, weights, steps=steps, batch_size=opts["judge_batch_size"],
                                         lr=opts["judge_lr"], rank=opts["lora_rank"], alpha=opts["lora_alpha"],
                                         target_modules=targets, max_length=opts["max_length"], seed=self.seed,
                                         backbone=(self.top if self.layers else self.base, self.tokenizer),
                                         states=fit_states)
        rows: list[float] = []
        try:
            value = -math.log(perplexity(model, tokenizer, held_texts, opts["max_length"], states=held_states, rows=rows))
        finally:
            unloaded = model.unload()  # the checkpoint without the adapter, for the next fit
            unloaded.eval()
            if self.layers:
                self.top = unloaded
            else:
                self.base = unloaded
        self.fits += 1
        return value, -np.asarray(rows, np.float64)

    def _cached(self, keys: list[tuple], texts: list[str]):
        """`states(rows, width)` for train_lora/perplexity over these texts: their cached layer inputs."""
        self.states.fill(keys, texts)
        return lambda rows, width: self.states.batch([keys[int(r)] for r in rows], width)
