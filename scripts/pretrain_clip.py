"""Pre-train the image track's own small CLIP on the image pool (cached by content hash).

No CLIP weights can be downloaded here, so, as the LM track does, the benchmark and `make
demo-image` build their own: an open_clip model with small towers (`pretrained=None`), trained with
open_clip's contrastive loss on the pool's image-caption pairs. It has seen the pool, which is the
property selection needs. A user with a real checkpoint passes `--image-model NAME
--image-pretrained FILE` to albat instead.

The entry is OUT_ROOT/<16 hex of sha256(captions.jsonl sha256, config, hyperparameters)>/ holding
`albat-clip-small.json` (the open_clip model config: albat's `--image-model`), `checkpoint.pt`
(a state dict: `--image-pretrained`) and `albat_clip.json`, the completion record. It is written
to a temporary sibling and renamed into place, so it is whole or absent; a second call with the
same inputs returns at once.

    python scripts/pretrain_clip.py --pool data/images/pool --out work/clip
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from albat.stores.atomic import sha256_file  # noqa: E402

RECORD = "albat_clip.json"
CONFIG_NAME = "albat-clip-small"
# small enough to pre-train in a few CPU minutes: 32-pixel images in 16 patches, two-layer towers
SMALL_CLIP = {"embed_dim": 128,
              "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8, "head_width": 32},
              "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2}}


def _decode_pool(pool: Path, size: int, exclude: set[str]) -> tuple["np.ndarray", list[str]]:  # noqa: F821
    """Every decodable pool image resized to size×size uint8, and its caption (the imagefolder reader)."""
    import numpy as np

    from albat.stores.image_corpus import ImageCorpusSpec, decode_image, iter_entries

    spec = ImageCorpusSpec(paths=[str(pool)])
    pixels, captions = [], []
    for entry in iter_entries(spec, pool, "imagefolder"):
        if entry.name in exclude:
            continue
        try:
            image = decode_image(entry.data)
        except ValueError:
            continue
        pixels.append(np.asarray(image.resize((size, size)), dtype=np.uint8))
        captions.append(entry.caption)
    return np.stack(pixels), captions


def pretrain_clip(pool: Path, out_root: Path, *, epochs: int = 4, batch_size: int = 128, lr: float = 1e-3,
                  seed: int = 0, exclude: tuple[str, ...] = (), progress: bool = True) -> Path:
    """Return the cached model directory for these inputs, training it first if it is absent."""
    config = SMALL_CLIP
    hyper = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "config": config,
             "exclude": sorted(exclude)}
    key = hashlib.sha256(json.dumps({"captions": sha256_file(pool / "captions.jsonl"), **hyper},
                                    sort_keys=True).encode()).hexdigest()[:16]
    final = out_root / key
    if (final / RECORD).exists():
        return final
    import numpy as np
    import torch
    import torch.nn.functional as F

    from albat.pipeline.compat_torchvision import import_open_clip

    open_clip = import_open_clip()
    started = time.perf_counter()
    pixels, captions = _decode_pool(pool, config["vision_cfg"]["image_size"], set(exclude))
    tmp = out_root / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / f"{CONFIG_NAME}.json").write_text(json.dumps(config, indent=1) + "\n")
    open_clip.add_model_config(str(tmp / f"{CONFIG_NAME}.json"))
    torch.manual_seed(seed)
    model = open_clip.create_model(CONFIG_NAME, pretrained=None, output_dict=True)
    tokenizer = open_clip.get_tokenizer(CONFIG_NAME)
    tokens = tokenizer(captions)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # uint8, normalised per batch
    steps = epochs * max(1, len(images) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    model.train()
    step, losses = 0, []
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            rows = torch.from_numpy(order[start:start + batch_size])
            batch = images[rows].float() / 255
            if rng.random() < 0.5:
                batch = batch.flip(3)  # horizontal flips: the one augmentation clip art keeps its meaning under
            out = model((batch - mean) / std, tokens[rows])
            logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
            target = torch.arange(len(rows))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            losses.append(float(loss.detach()))
        if progress:
            print(f"pretrain_clip: epoch {epoch + 1}/{epochs} loss {np.mean(losses[-20:]):.3f} "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    model.eval()
    torch.save(model.state_dict(), tmp / "checkpoint.pt")
    record = {"key": key, **hyper, "images": len(images), "steps": step, "final_loss": float(np.mean(losses[-20:])),
              "seconds": round(time.perf_counter() - started, 1), "pool": str(pool)}
    (tmp / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, default=Path("data/images/pool"))
    parser.add_argument("--out", type=Path, default=Path("work/clip"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--print", choices=("dir", "model", "pretrained"), default="dir",
                        help="what to print: the cache entry, its model config (.json) or its checkpoint")
    args = parser.parse_args(argv)
    final = pretrain_clip(args.pool, args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          seed=args.seed)
    print({"dir": final, "model": final / f"{CONFIG_NAME}.json", "pretrained": final / "checkpoint.pt"}[args.print])


if __name__ == "__main__":
    main()
