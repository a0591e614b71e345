"""`auto`'s `judge=lm`: the fold judge is the causal language model the user will adapt.

The contrastive judge (auto.Judge) is a residual adapter on the store's sentence embeddings: cheap,
and the same class as a contrastive adapted model, but not a language model. On the language-model
benchmark the question that matters is one it cannot answer: does training the LM's LoRA on the
adaptation texts plus the selection (weighted as `albat emit` weighs it) lower the held-out
perplexity of the target, and at which weight λ (BENCHMARKS.md, `lm-lambda`: λ = 4 beats λ = 1 on
every in-pool target; on a target outside the pool every λ > 0 loses to the adaptation set alone).

    score(train, held, kept, λ) = − log perplexity of the held-out fold's texts under
        LoRA(s AdamW steps of batch b on the training fold's texts with weight 1 each and the kept
             backbone rows with weight λ·n_train/|kept| each)         (pipeline/surrogates/lora_train.py)

Set `judge_steps` to the steps the real training will take and `judge_batch_size` to its batch. A fold
holds n_train = (1 − 1/folds)·n_A of the adaptation texts and a budget scaled the same way, so the real
run's (steps, batch) cannot be copied as they are. `fold_scale` says what the fold keeps:

    fold_scale=batch [default]: s = judge_steps, b = round(judge_batch_size · n_train / n_A)  (`fold_plan`)
        as many optimizer steps as the real run, and every row seen as often (steps·b / rows equal);
    fold_scale=steps:           s = round(judge_steps · n_train / n_A), b = judge_batch_size
        every row seen as often, but fewer steps (round eleven's judge).

Why batch: on a few texts the real run's batch holds the whole adaptation set, so training on it alone is
full-batch and overfits with every step. fold_scale=steps gives that arm a third fewer steps, catches it
before it overfits and keeps λ = 0 where adding rows wins (fortunes_de at n_A = 16: +90 perplexity
against random, docs/albat-design.md round eleven). The full `judge_steps` at the full batch on a smaller
fold shows each row more often than the real run will, so the fold-alone arm overfits sooner and adding
data looks better than it is (vera at n_A = 64: λ = 1 chosen where the adaptation set alone is better).

λ = 0, or nothing kept, is training on the fold alone: one fit per fold, shared by every method and
budget (fits are cached by (train rows, kept ids, λ)). Every fit starts from the same seeded LoRA
initialisation and batch order, so the arms of one fold are paired. The backbone checkpoint is
loaded once; each fit's adapter is removed again (peft's `unload`) before the next one.
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


def fold_plan(judge_steps: int, batch_size: int, n_train: int, n: int, scale: str = "batch") -> tuple[int, int]:
    """(steps, batch) of a fold's fit on n_train of the n adaptation texts: `scale=batch` keeps the
    steps and shrinks the batch to the fold's share (at least 1), `scale=steps` keeps the batch and
    shrinks the steps (`fold_steps`). Either way each row is seen about as often as in the real run."""
    if scale == "batch":
        return judge_steps, max(1, int(round(batch_size * n_train / n)))
    if scale == "steps":
        return fold_steps(judge_steps, n_train, n), batch_size
    raise ValueError(f"fold_scale={scale!r}: choose batch or steps")


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
        self.fits = 0

    def score(self, train: np.ndarray, held: np.ndarray, kept: np.ndarray, lam: float) -> tuple[float, float]:
        kept = np.sort(np.asarray(kept, np.int64)) if lam > 0 else np.zeros(0, np.int64)
        key = (tuple(int(i) for i in train), tuple(int(i) for i in held), kept.tobytes(), float(lam) if len(kept) else 0.0)
        if key not in self.cache:
            self.cache[key] = self._fit_and_score(train, held, kept, lam)
        value = self.cache[key]
        return value, value

    def _fit_and_score(self, train: np.ndarray, held: np.ndarray, kept: np.ndarray, lam: float) -> float:
        from albat.pipeline.surrogates.lora_train import perplexity, train_lora

        opts = self.opts
        texts = [self.texts[i] for i in train] + (self.store.texts_for_ids(kept) if len(kept) else [])
        weights = judge_weights(len(train), len(kept), lam)
        targets = [t for t in str(opts["target_modules"]).split(",") if t] or None
        steps, batch = fold_plan(opts["judge_steps"], opts["judge_batch_size"], len(train), len(self.texts),
                                 opts.get("fold_scale", "batch"))
        model, tokenizer, _ = train_lora(None, texts, weights, steps=steps, batch_size=batch, lr=opts["judge_lr"],
                                         rank=opts["lora_rank"], alpha=opts["lora_alpha"], target_modules=targets,
                                         max_length=opts["max_length"], seed=self.seed,
                                         backbone=(self.base, self.tokenizer))
        try:
            value = -math.log(perplexity(model, tokenizer, [self.texts[i] for i in held], opts["max_length"]))
        finally:
            self.base = model.unload()  # the checkpoint without the adapter, for the next fit
            self.base.eval()
        self.fits += 1
        return value
