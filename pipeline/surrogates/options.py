"""The surrogates' options, declared where the surrogates live (no heavy imports: the CLI's
`--surrogate` and `--surrogate-model` flags are built from them). Methods that train a surrogate
(albat, gradalign) take all of them: `SHARED`, then `CONTRASTIVE`'s and `LM`'s own."""
from __future__ import annotations

from albat.pipeline.options import FLOAT, INT, STR, Option

SHARED = (
    Option("surrogate", STR, "contrastive", "contrastive (store embeddings) or lm (causal LM + LoRA)",
           choices=("contrastive", "lm"), flag="--surrogate"),
    Option("steps", INT, 300, "surrogate training steps (early-stopped on held-out adaptation examples)", min=0,
           flag=""),
    Option("lr", FLOAT, 1e-3, "surrogate learning rate", above=0, flag=""),
    Option("batch_size", INT, 64, "surrogate training batch size", min=1, flag=""),
    Option("holdout_fraction", FLOAT, 0.25, "adaptation examples held out for early stopping (0: train on all, "
           "fixed steps)", min=0, below=1, flag=""),
    Option("projection_dim", INT, 1024, "sketched gradient size (0: exact gradients)", min=0, flag=""),
)

CONTRASTIVE = (
    Option("bank_size", INT, 128, "contrastive: fixed backbone negatives for per-example losses", min=1, flag=""),
    Option("view_sigma", FLOAT, 1.0, "contrastive, single-column data: noise norm of the second view", min=0,
           flag=""),
)

LM = (
    Option("model", STR, "", "lm: local Hugging Face causal-LM checkpoint directory (nothing is downloaded)",
           flag="--surrogate-model", metavar="DIR", path=True),
    Option("max_length", INT, 128, "lm: tokens per text, BOS included", min=2, flag=""),
    Option("lora_rank", INT, 8, "lm: LoRA rank", min=1, flag=""),
    Option("lora_alpha", FLOAT, 16.0, "lm: LoRA alpha", above=0, flag=""),
    Option("target_modules", STR, "", "lm: comma-separated LoRA targets (empty: peft's default for the "
           "architecture)", flag=""),
    Option("device", STR, "auto", "lm: auto (CUDA when present), cpu, cuda, cuda:N", flag=""),
)

SURROGATE_OPTIONS = SHARED + CONTRASTIVE + LM
