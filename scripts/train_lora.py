"""Train a LoRA adapter on an emitted albat shard set: the trainer hand-off, end to end.

    python scripts/train_lora.py --shards work/lm/tasks/default/output --model CHECKPOINT_DIR --out work/lm/adapter \
        [--eval held_out.parquet] [--steps 200 --batch-size 16 --lr 1e-3 --rank 8 --alpha 16]

The shard set is read with Hugging Face `datasets` (any trainer could read the same Parquet). Every
row carries `albat_weight` (adaptation rows 1, a selected backbone row λ·n_A/m·w_b); the weighted
training loop, `perplexity` and `lora_delta` live in albat.pipeline.surrogates.lora_train, which the
selection benchmark (benchmarks/bench_lm.py) and `auto`'s `judge=lm` use too. The adapter is saved
with peft's `save_pretrained` next to a `train_record.json`; `--eval` reports held-out perplexity.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from albat.pipeline.surrogates.lm import load_causal_lm  # noqa: E402,F401  (bench_lm loads through here)
from albat.pipeline.surrogates.lora_train import lora_delta, perplexity, train_lora  # noqa: E402,F401


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
