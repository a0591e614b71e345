"""What a LoRA training step of `auto`'s judge=lm fold judge costs with `judge_layers=k` (LoRA on the
top k decoder layers, pipeline/surrogates/lm_top.py) against the full fit (every layer), on Llama
shapes from the language-model benchmark's own backbone to a 24-layer one of hidden size 1,024, all measured in one run
on this machine. The models are random-initialised (a step's cost does not depend on the weights);
the texts are the benchmark pool's, tokenized by the benchmark LM's tokenizer (ids below
its 4,096 tokens; the larger vocabularies still cost their full head). Each arm: `--steps` steps at batch 16 after one warm-up step,
the median step time reported; the cut arm's one-off cost of computing the layer inputs is reported
beside it, per text.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import albat  # noqa: E402,F401 - its torchvision guard precedes the transformers import
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from benchmarks.report import markdown_table, write_section  # noqa: E402

SHAPES = [  # (layers, hidden, intermediate, heads, vocab)
    (4, 256, 688, 4, 4096),  # the benchmark's backbone LM (bench_lm)
    (16, 512, 1376, 8, 32000),
    (24, 1024, 2816, 16, 32000),  # a head worth about 2.5 layers, as in 7B-class LMs (0.6 to 2.6 layers)
]


def step_seconds(model, tok, texts: list[str], states, steps: int, max_length: int) -> float:
    """Median seconds of a LoRA step (forward, backward, AdamW) at batch 16 (the first step not counted)."""
    import torch

    from albat.pipeline.surrogates.lm import attach_lora, lora_parameters, tokenize
    from albat.pipeline.surrogates.lora_train import row_nll

    peft = attach_lora(model, 8, 16.0, None, 0)
    params = list(lora_parameters(peft).values())
    opt = torch.optim.AdamW(params, lr=1e-3)
    tokens = tokenize(tok, texts, max_length)
    times = []
    for step in range(steps + 1):
        rows = np.arange(step * 16, step * 16 + 16) % len(texts)
        ids, mask = tokens.take(rows).batch(slice(None), "cpu")
        clock = time.perf_counter()
        loss = row_nll(peft, ids, mask, None if states is None else states(rows, ids.shape[1])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - clock)
    peft.unload()
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/select/pool.parquet"))
    parser.add_argument("--backbone", type=Path, default=None, help="the benchmark LM's checkpoint (its tokenizer "
                        "is used for every shape; default: the newest under work/bench_lm*/backbone)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from albat.pipeline.surrogates.lm import load_causal_lm
    from albat.pipeline.surrogates.lm_top import StateCache, top_model

    torch.set_num_threads(args.threads)
    found = sorted(Path("work").glob("bench_lm*/backbone/*/config.json"), key=lambda p: p.stat().st_mtime)
    if args.backbone is None and not found:
        raise SystemExit("bench_judge_cut: no benchmark LM under work/bench_lm*/backbone; run `make bench-lm` "
                         "first (it pre-trains it) or pass --backbone DIR (any local causal-LM checkpoint)")
    backbone = args.backbone or found[-1].parent
    _, tok = load_causal_lm(backbone, "cpu")
    texts = [t for t in pq.read_table(args.data, columns=["text"]).column("text").to_pylist() if t][: args.texts]
    rows = []
    for layers, hidden, inter, heads, vocab in SHAPES:
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=128,
                             tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
        model = LlamaForCausalLM(config).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        full = step_seconds(model, tok, texts, None, args.steps, args.max_length)
        for k in sorted({1, max(1, layers // 8), max(1, layers // 4)}):
            top = top_model(model, k)
            cache = StateCache(model, tok, k, args.max_length)
            clock = time.perf_counter()
            cache.fill(list(range(len(texts))), texts)  # a text's key is its row
            fill = (time.perf_counter() - clock) / len(texts)
            cut = step_seconds(top, tok, texts, lambda r, w: cache.batch([int(i) for i in r], w), args.steps, args.max_length)
            rows.append([f"{layers} × {hidden}, vocab {vocab:,}", k, f"{full * 1e3:.0f}", f"{cut * 1e3:.0f}",
                         f"{full / cut:.2f}x", f"{fill * 1e3:.1f}"])
            print(rows[-1], flush=True)
            del top, cache
        del model
    body = (f"LoRA (rank 8, q and v) steps at batch 16 on {len(texts)} pool texts of at most {args.max_length} "
            f"tokens, {args.threads} thread(s), median of {args.steps} steps. `cut` trains the top k layers on "
            "cached layer inputs (`judge_layers=k`); `fill` is the one-off cost of a text's cached input.\n\n"
            + markdown_table(["model (layers × hidden)", "k", "full step ms", "cut step ms", "speed-up",
                              "fill ms/text"], rows))
    write_section(args.out, "judge-cut", "auto judge=lm: the cut judge's step cost (judge_layers)", body)


if __name__ == "__main__":
    main()
