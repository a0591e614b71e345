"""Pre-train a small backbone causal LM on the benchmark's backbone pool (cached by content hash).

The paper adapts a backbone LM that was pre-trained on the backbone corpus. No pretrained LM can
be downloaded here, so the benchmark builds its own: a byte-level BPE tokenizer and a few-million
parameter Llama trained from scratch on the pool texts. It is small, but it has seen the pool and
not the held-out domains, which is the property the selection experiments need. Real users point
the benchmark at a real checkpoint directory instead.

The result lives in OUT_ROOT/<16 hex of sha256(texts sha256, column, hyperparameters)>/ and holds
a `save_pretrained` model (safetensors), its tokenizer and `albat_backbone.json`, the completion
record. The entry is written to a temporary sibling and renamed into place, so it is either whole
or absent; a second call with the same inputs returns at once.

    python scripts/pretrain_lm.py --texts data/select/pool.parquet --column text \
        --out work/bench_lm/backbone
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from albat.stores.atomic import sha256_file  # noqa: E402

RECORD = "albat_backbone.json"
EOS = "<|endoftext|>"


def _read_texts(path: Path, column: str, max_rows: int | None) -> list[str]:
    """Stream the column in record batches; empty and null rows carry no signal and are dropped."""
    import pyarrow.parquet as pq
    out: list[str] = []
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65536, columns=[column]):
        out.extend(t for t in batch.column(0).to_pylist() if t)
        if max_rows is not None and len(out) >= max_rows:
            return out[:max_rows]
    return out


def _train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (no unknown tokens); `<|endoftext|>` doubles as bos, eos and pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS,
                                   pad_token=EOS, unk_token=None, model_max_length=1 << 30)


def _batches(lengths: list[int], batch_size: int, seed: int):
    """Endless seeded shuffle; each run of 50 batches is sorted by length to cut padding."""
    import numpy as np
    rng, chunk = np.random.default_rng(seed), 50 * batch_size
    while True:
        perm = rng.permutation(len(lengths))
        for s in range(0, len(perm), chunk):
            part = sorted(perm[s:s + chunk], key=lambda i: lengths[i])
            group = [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
            for k in rng.permutation(len(group)):
                yield group[k]


def backbone_dir(texts_sha: str, column: str, out_root: Path, hparams: dict) -> Path:
    """Where the backbone of these inputs is cached: out_root / the first 16 hex digits of a hash of the
    texts' sha256, the column and every hyper-parameter."""
    key_src = json.dumps({"texts_sha256": texts_sha, "column": column, **hparams}, sort_keys=True)
    return Path(out_root) / hashlib.sha256(key_src.encode()).hexdigest()[:16]


def default_backbone_dir(texts: Path, column: str, out_root: Path) -> Path:
    """`pretrain_backbone`'s cache directory at its default hyper-parameters, without training anything."""
    defaults = {name: p.default for name, p in inspect.signature(pretrain_backbone).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "progress"}
    return backbone_dir(sha256_file(Path(texts)), column, out_root, defaults)


def pretrain_backbone(texts: Path, column: str, out_root: Path, *, vocab_size: int = 4096,
                      layers: int = 4, hidden: int = 256, heads: int = 4, max_length: int = 64,
                      steps: int = 2400, batch_size: int = 32, lr: float = 2e-3, seed: int = 0,
                      max_rows: int | None = None, progress: bool = True) -> Path:
    """Return the cached backbone directory for these inputs, training it first if it is absent.

    Defaults: ~4.5k tok/s on an idle 2-core CPU, so 2400 steps of 32 texts (~2.1M tokens, ~0.6
    epoch of the 3.7M-token pool) take ~8 minutes (train loss ~4.35); lr 2e-3 beat 1e-3 and
    4e-3 in 300-step trials. Training is bit-for-bit reproducible on one machine.
    """
    texts, out_root = Path(texts), Path(out_root)
    hparams = dict(vocab_size=vocab_size, layers=layers, hidden=hidden, heads=heads,
                   max_length=max_length, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                   max_rows=max_rows)
    texts_sha = sha256_file(texts)
    final = backbone_dir(texts_sha, column, out_root, hparams)
    if (final / RECORD).is_file():
        return final
    out_root.mkdir(parents=True, exist_ok=True)
    for stale in out_root.glob(f"{final.name}.tmp-*"):  # left by a killed run (not a live one)
        try:
            os.kill(int(stale.name.rsplit("-", 1)[1]), 0)
        except (ProcessLookupError, ValueError):
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:
            pass

    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    if not progress:  # transformers 5 shows a "Writing model shards" bar in save_pretrained
        transformers.utils.logging.disable_progress_bar()
    t0 = time.time()
    rows = _read_texts(texts, column, max_rows)
    tok = _train_tokenizer(rows, vocab_size)
    eos = tok.convert_tokens_to_ids(EOS)
    ids = [e.ids[:max_length - 1] + [eos] for e in tok.backend_tokenizer.encode_batch(rows)]
    log(f"[pretrain_lm] {len(ids)} texts, {sum(map(len, ids))} tokens, vocab {tok.vocab_size}, "
        f"{time.time() - t0:.0f}s")

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads,
                         intermediate_size=int(round(2.7 * hidden / 8)) * 8,
                         max_position_embeddings=max(max_length, 128), tie_word_embeddings=True,
                         bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, use_cache=True)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    warmup = max(1, steps // 25)  # short linear warmup, then cosine to 10% of lr
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup if s < warmup else
                                              0.1 + 0.45 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    model.train()
    lengths, losses, n_tok, t1 = [len(x) for x in ids], [], 0, time.time()
    for step, idx in zip(range(1, steps + 1), _batches(lengths, batch_size, seed)):
        width = max(lengths[i] for i in idx)
        inp = torch.full((len(idx), width), eos, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            inp[r, :lengths[i]] = torch.tensor(ids[i])
            mask[r, :lengths[i]] = 1
        labels = inp.masked_fill(mask == 0, -100)  # eos is a real target; padding is not
        loss = model(input_ids=inp, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
        losses.append(loss.item()); n_tok += int(mask.sum())
        if step % 20 == 0 or step == steps:
            el = time.time() - t1
            log(f"[pretrain_lm] step {step}/{steps} loss {sum(losses[-20:]) / len(losses[-20:]):.3f} "
                f"lr {sched.get_last_lr()[0]:.2e} {n_tok / el:.0f} tok/s ETA {el / step * (steps - step):.0f}s")
    final_loss = sum(losses[-50:]) / len(losses[-50:])

    tmp = out_root / f"{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.eval()
    model.save_pretrained(tmp)  # safetensors by default
    tok.save_pretrained(tmp)
    record = {"hyperparameters": hparams, "column": column, "texts": str(texts),
              "texts_sha256": texts_sha, "rows": len(ids), "train_tokens_seen": n_tok,
              "final_train_loss": final_loss, "param_count": n_params,
              "seconds": round(time.time() - t0, 1), "train_seconds": round(time.time() - t1, 1),
              "torch": torch.__version__, "transformers": transformers.__version__}
    (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    try:
        os.replace(tmp, final)
    except OSError:  # a concurrent run finished first (or a stray dir without a record is there)
        if (final / RECORD).is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        shutil.rmtree(final)
        os.replace(tmp, final)
    log(f"[pretrain_lm] {n_params} params, final loss {final_loss:.3f}, {record['seconds']}s -> {final}")
    return final


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--texts", type=Path, required=True, help="Parquet file with the backbone pool")
    p.add_argument("--column", default="text")
    p.add_argument("--out", type=Path, required=True, help="cache root; an entry per content hash")
    for name, typ in [("vocab-size", int), ("layers", int), ("hidden", int), ("heads", int),
                      ("max-length", int), ("steps", int), ("batch-size", int), ("lr", float),
                      ("seed", int), ("max-rows", int)]:
        p.add_argument(f"--{name}", type=typ, default=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    a = vars(p.parse_args(argv))
    texts, column, out, quiet = a.pop("texts"), a.pop("column"), a.pop("out"), a.pop("quiet")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(pretrain_backbone(texts, column, out, progress=not quiet, **a))


if __name__ == "__main__":
    main()
