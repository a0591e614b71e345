"""Train a LoRA adapter on an emitted albat shard set: the trainer hand-off, end to end.

    python scripts/train_lora.py --shards work/lm/tasks/default/output --model CHECKPOINT_DIR --out work/lm/adapter \
        [--eval held_out.parquet] [--steps 200 --batch-size 16 --lr 1e-3 --rank 8 --alpha 16]

The shard set is read with Hugging Face `datasets` (any trainer could read the same Parquet). Every
row carries `albat_weight`: adaptation rows weigh 1 and a selected backbone row weighs
λ·n_A/m·w_b (pipeline/emit.py), so minimising Σ_i albat_weight_i · ℓ_i is the BAT objective
mean_A ℓ + λ·mean_S w_b ℓ up to a constant. Each step takes the next batch B of a seeded shuffle
and minimises the unbiased estimate

    L_B = (N / |B|) · Σ_{i∈B} albat_weight_i · ℓ_i  /  Σ_{all i} albat_weight_i,

ℓ_i being the mean next-token NLL of row i (the same ℓ as the `lm` surrogate). The adapter is saved
with peft's `save_pretrained` next to a `train_record.json`; `--eval` reports held-out perplexity.
The selection benchmark (benchmarks/bench_lm.py) trains every arm with this file's `train_lora`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from albat.pipeline.surrogates.lm import (attach_lora, load_causal_lm, lora_parameters, resolve_device,  # noqa: E402
                                    token_nll, tokenize)


def load_shard_set(shards: Path, text_column: str = "text") -> tuple[list[str], np.ndarray]:
    """Texts and albat_weight of every row of an emitted shard set, through HF `datasets`."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    manifest = json.loads((shards / "manifest.json").read_text())
    files = [str(shards / s["path"]) for s in manifest["shards"]]
    if not files:
        return [], np.empty(0)
    data = Dataset.from_parquet(files, columns=[text_column, "albat_weight"], keep_in_memory=True)
    return list(data[text_column]), np.asarray(data["albat_weight"], dtype=np.float64)


def train_lora(model_dir: str | Path, texts: list[str], weights: np.ndarray, *, steps: int = 200,
               batch_size: int = 16, lr: float = 1e-3, rank: int = 8, alpha: float = 16.0,
               target_modules: list[str] | None = None, max_length: int = 128, seed: int = 0,
               device: str = "auto", backbone: Any = None, eval_at: tuple[int, ...] = (),
               evaluate: Callable[[Any, Any], float] | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """(peft model, tokenizer, report): LoRA trained `steps` steps on the weighted rows.

    `backbone` = (model, tokenizer) from `load_causal_lm` skips reloading the checkpoint; its
    weights are never changed (only the adapter trains), but peft wraps it, so pass a fresh one.
    `evaluate(model, tokenizer)` runs (in eval mode) after each step count in `eval_at` (and after
    step 0 if 0 is listed); the report's `curve` maps those step counts to its values, the
    convergence of one training run, and `eval_seconds` is the time they took (not in `seconds`)."""
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
        per_row = token_nll(model, ids, mask)
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


def perplexity(model, tokenizer, texts: list[str], max_length: int = 128, batch_size: int = 32) -> float:
    """exp(total next-token NLL / total predicted tokens) over `texts`."""
    import torch

    tokens = tokenize(tokenizer, texts, max_length)
    device = next(model.parameters()).device
    total, count = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(tokens), batch_size):
            ids, mask = tokens.batch(slice(start, start + batch_size), device)
            n = mask[:, 1:].sum(1).double()
            total += float((token_nll(model, ids, mask).double() * n).sum())
            count += float(n.sum())
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", required=True, type=Path, help="emitted shard set (the folder with manifest.json)")
    parser.add_argument("--model", required=True, help="local Hugging Face causal-LM checkpoint directory")
    parser.add_argument("--out", required=True, type=Path, help="where the adapter and train_record.json go")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--eval", type=Path, help="Parquet of held-out texts (same text column) for perplexity")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--target-modules", default="", help="comma-separated; empty: peft's default")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts, weights = load_shard_set(args.shards, args.text_column)
    targets = [t for t in args.target_modules.split(",") if t] or None
    model, tokenizer, report = train_lora(args.model, texts, weights, steps=args.steps, batch_size=args.batch_size,
                                          lr=args.lr, rank=args.rank, alpha=args.alpha, target_modules=targets,
                                          max_length=args.max_length, seed=args.seed, device=args.device)
    if args.eval:
        import pyarrow.parquet as pq

        held = pq.read_table(args.eval, columns=[args.text_column]).column(args.text_column).to_pylist()
        report["eval_perplexity"] = round(perplexity(model, tokenizer, held, args.max_length), 4)
    tmp = args.out.with_name(args.out.name + ".tmp")
    model.save_pretrained(tmp)
    (tmp / "train_record.json").write_text(json.dumps({**report, "shards": str(args.shards), "model": str(args.model)},
                                                      indent=2))
    if args.out.exists():
        import shutil

        shutil.rmtree(args.out)
    tmp.rename(args.out)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
