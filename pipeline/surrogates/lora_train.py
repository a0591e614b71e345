"""Weighted LoRA training and held-out perplexity of a causal LM: the trainer hand-off
(scripts/train_lora.py), the language-model benchmark's judge (benchmarks/bench_lm.py) and
`auto`'s `judge=lm` fold judge (pipeline/methods/lm_judge.py) all train with this one loop.

Every row carries a weight (an emitted row's `albat_weight`: adaptation rows weigh 1 and a selected
backbone row weighs λ·n_A/m·w_b, pipeline/emit.py), so minimising Σ_i w_i · ℓ_i is the BAT objective
mean_A ℓ + λ·mean_S w_b ℓ up to a constant. Each step takes the next batch B of a seeded shuffle
and minimises the unbiased estimate

    L_B = (N / |B|) · Σ_{i∈B} w_i · ℓ_i  /  Σ_{all i} w_i,

ℓ_i being the mean next-token NLL of row i (the same ℓ as the `lm` surrogate).

With `states` the model is a cut one (pipeline/surrogates/lm_top.py: the top layers of the LM) and
`states(rows, width)` gives the rows' cached inputs of its first layer; every formula is unchanged.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from albat.pipeline.surrogates.lm import (attach_lora, load_causal_lm, lora_parameters, nll_from_logits, resolve_device,
                                         token_nll, tokenize)


def train_lora(model_dir: str | Path, texts: list[str], weights: np.ndarray, *, steps: int = 200,
               batch_size: int = 16, lr: float = 1e-3, rank: int = 8, alpha: float = 16.0,
               target_modules: list[str] | None = None, max_length: int = 128, seed: int = 0,
               device: str = "auto", backbone: Any = None, eval_at: tuple[int, ...] = (),
               evaluate: Callable[[Any, Any], float] | None = None,
               states: Callable[[np.ndarray, int], Any] | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """(peft model, tokenizer, report): LoRA trained `steps` steps on the weighted rows.

    `backbone` = (model, tokenizer) from `load_causal_lm` skips reloading the checkpoint; its
    weights are never changed (only the adapter trains), but peft wraps it, so pass a fresh one.
    `evaluate(model, tokenizer)` runs (in eval mode) after each step count in `eval_at` (and after
    step 0 if 0 is listed); the report's `curve` maps those step counts to its values, the
    convergence of one training run, and `eval_seconds` is the time they took (not in `seconds`).
    `states(rows, width)`: the cut model's inputs for those rows (lm_top.StateCache.batch)."""
    import torch

    if len(texts) != len(weights) or not len(texts):
        raise ValueError(f"train_lora needs as many weights as texts, and at least one ({len(texts)}, {len(weights)})")
    device = resolve_device(device)
    model, tokenizer = backbone or load_causal_lm(model_dir, device)
    model = attach_lora(model, rank, alpha, target_modules, seed)
    params = list(lora_parameters(model).values())
    tokens = tokenize(tokenizer, texts, max_length)
    w = torch.as_tensor(weights, dtype=torch.float32)
    norm = float(w.sum())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    order, cursor, losses = rng.permutation(len(texts)), 0, []
    curve: dict[int, float] = {}
    eval_seconds = 0.0

    def checkpoint(step: int) -> None:
        nonlocal eval_seconds
        if evaluate is not None and step in eval_at:
            clock = time.perf_counter()
            model.eval()
            curve[step] = float(evaluate(model, tokenizer))
            model.train()
            eval_seconds += time.perf_counter() - clock

    started = time.perf_counter()
    model.train()
    checkpoint(0)
    for step in range(1, steps + 1):
        if cursor + batch_size > len(order) and cursor:
            order, cursor = rng.permutation(len(texts)), 0
        rows = np.sort(order[cursor: cursor + batch_size])
        cursor += batch_size
        ids, mask = tokens.take(rows).batch(slice(None), device)
        per_row = row_nll(model, ids, mask, None if states is None else states(rows, ids.shape[1]))
        loss = (len(texts) / len(rows)) * (w[rows].to(device) * per_row).sum() / norm
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        checkpoint(step)
    model.eval()
    report = {"steps": steps, "rows": len(texts), "batch_size": batch_size, "lr": lr, "rank": rank, "alpha": alpha,
              "max_length": max_length, "seed": seed, "device": device, "seconds": round(time.perf_counter() - started - eval_seconds, 2),
              "final_loss": round(float(np.mean(losses[-10:])), 5) if losses else None}
    if evaluate is not None:
        report.update(curve=curve, eval_seconds=round(eval_seconds, 2))
    return model, tokenizer, report


def row_nll(model, ids, mask, states=None):
    """Per-row mean next-token NLL: `token_nll`, or on a cut model's cached inputs `states`."""
    if states is None:
        return token_nll(model, ids, mask)
    from albat.pipeline.surrogates.lm_top import top_logits

    return nll_from_logits(top_logits(model, states, mask), ids, mask)


def perplexity(model, tokenizer, texts: list[str], max_length: int = 128, batch_size: int = 32,
               states: Callable[[np.ndarray, int], Any] | None = None, rows: list | None = None) -> float:
    """exp(total next-token NLL / total predicted tokens) over `texts` (`states`: as in train_lora); `rows`,
    a list, receives each text's mean next-token NLL (float64, in order)."""
    import torch

    tokens = tokenize(tokenizer, texts, max_length)
    device = next(model.parameters()).device
    total, count = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(tokens), batch_size):
            ids, mask = tokens.batch(slice(start, start + batch_size), device)
            n = mask[:, 1:].sum(1).double()
            cached = None if states is None else states(np.arange(start, start + len(ids)), ids.shape[1])
            nll = row_nll(model, ids, mask, cached).double()
            total += float((nll * n).sum())
            count += float(n.sum())
            if rows is not None:
                rows.extend(nll.cpu().tolist())
    return math.exp(total / max(count, 1.0))


def lora_delta(model) -> np.ndarray:
    """The adapter's weight change, every ΔW = scaling·B·A flattened and concatenated (fixed order):
    unlike (A, B) it does not depend on the factorisation, so two adapters compare by distance."""
    parts = []
    for name, module in sorted(model.named_modules()):
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            delta = module.lora_B["default"].weight @ module.lora_A["default"].weight * module.scaling["default"]
            parts.append(delta.detach().double().cpu().reshape(-1).numpy())
    return np.concatenate(parts) if parts else np.empty(0)
