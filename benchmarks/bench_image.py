"""The image track: hold out image categories of the real offline pool as targets, adapt the
benchmark's own small CLIP on n_A image-caption pairs plus each method's selection, and score the
adapted model on the held-out images of the target.

Data: `scripts/fetch_images.py` (`make data-images`: Tux Paint stamps, Open Clip Art, Noto emoji; 10,259
captioned images in 46 (source, category) groups). `prepare` holds out each target category's
images: `--adapt-pool` of them form the adaptation pool (n_A are drawn per seed), `--test` the test
set, and the rest stay in the backbone pool, where `oracle` draws from them. Every other image is
backbone. The held-out images are also left out of the CLIP pre-training (`scripts/pretrain_clip.py`,
cached by content hash; `--clip-model JSON --clip-pretrained FILE` use a real checkpoint instead).

The run is bench_select's (`benchmarks/bench_select.py`): `albat embed --modality image` (image
embeddings searched image → image, captions as the pair side), `albat query` with the n_A images,
`albat filter` per method at m = ratio·n_A, and the judge: the contrastive residual adapter (CLIP's
loss on cached embeddings, the paper's image setting) trained on the adaptation pairs plus the
selection with weight λ. What the adapter is scored on differs from the text track:
- image → caption retrieval: each test image finds its own caption among the test captions and
  `--distractors` backbone captions (Recall@1, MRR: the report's main metric);
- zero-shot classification of the target category, two ways, with the prompt `--prompt` ("<category>
  clip art" by default: the targets' captions end that way, and CLIP's prompts follow its captions):
  detection, the ROC AUC of the cosine to the target's prompt separating the test images from
  `--zeroshot-others` backbone images of other categories (a fixed sample; chance 0.5; the report's
  zero-shot metric), and accuracy of the test images and as many of those others, each classified
  among the prompts of every category in the pool (near chance for a small CLIP).
Cells are evidence where oracle − random on the MRR exceeds their seed spread, as on the text track.

It also times the embed stage against open_clip's own loop in the same run: `albat embed` on the
first `--speed-images` pool images into a fresh work directory (in this process, after the pool's
own embed has loaded the model once), and a bare loop (decode, open_clip's preprocess,
`encode_image`, batches of 128, no worker pool) over the same images.

    python -m benchmarks.bench_image --out BENCHMARKS.md
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks import bench_select
from benchmarks.bench_select import Track, build_parser, fixed_sample, retrieval, run
from benchmarks.report import markdown_table, write_section

TARGETS = "openclipart/animals,openclipart/food,openclipart/transportation"


PROMPT = "{} clip art"  # the targets' own caption style ("apple bitten, food clip art"), as CLIP's prompts follow its captions


def prompt(category: str, template: str = PROMPT) -> str:
    return template.format(category.replace("_", " "))


def prepare(images: Path, out: Path, targets: list[tuple[str, str]], adapt_pool: int, test: int, seed: int) -> list[str]:
    """Write OUT/pool.parquet, OUT/<slug>/{adapt,test}.parquet and OUT/domains.json (bench_select's
    layout: id, image (an absolute path: run folders copy these tables), text, source, label); return the held-out file names
    (relative to the image pool) that the CLIP pre-training must not see. Skipped when complete."""
    held_path = out / "heldout_files.json"
    if held_path.exists() and (out / "domains.json").exists():
        return json.loads(held_path.read_text())
    records = [json.loads(line) for line in (images / "pool" / "captions.jsonl").read_text().splitlines() if line]
    root = (images / "pool").resolve()
    table = {"id": [r["id"] for r in records], "image": [str(root / r["file_name"]) for r in records],
             "text": [r["text"] for r in records], "source": [r["source"] for r in records],
             "label": [r["category"] for r in records]}
    files = [r["file_name"] for r in records]
    source, label = np.array(table["source"]), np.array(table["label"])
    held = np.zeros(len(records), bool)
    domains, heldout_files = [], []
    out.mkdir(parents=True, exist_ok=True)
    for src, cat in targets:
        members = np.flatnonzero((source == src) & (label == cat))
        if len(members) < adapt_pool + test + 1:
            raise SystemExit(f"target {src}/{cat} has {len(members)} images; it needs more than {adapt_pool + test}")
        members = np.random.default_rng([seed, len(members)]).permutation(members)
        slug = f"{src}_{cat}"
        (out / slug).mkdir(exist_ok=True)
        for split, rows in (("adapt", members[:adapt_pool]), ("test", members[adapt_pool:adapt_pool + test])):
            rows = np.sort(rows)
            pq.write_table(pa.table({k: [v[i] for i in rows] for k, v in table.items()}), out / slug / f"{split}.parquet")
            held[rows] = True
            heldout_files += [files[i] for i in rows]
        domains.append({"slug": slug, "filter": {"source": src, "label": cat}, "adapt": f"{slug}/adapt.parquet",
                        "test": f"{slug}/test.parquet", "in_pool": True})
    keep = np.flatnonzero(~held)
    pq.write_table(pa.table({k: [v[i] for i in keep] for k, v in table.items()}), out / "pool.parquet")
    (out / "domains.json").write_text(json.dumps(domains, indent=1) + "\n")
    held_path.write_text(json.dumps(sorted(heldout_files)) + "\n")
    return sorted(heldout_files)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of `scores` separating the `positive` rows from the rest: the chance that a random
    positive scores above a random negative, ties counting ½ (scikit-learn's; ValueError if one class
    is empty)."""
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        raise ValueError("roc_auc needs both positive and negative rows")
    return float(roc_auc_score(positive, scores))


def image_embed_args(model: str, pretrained: str) -> list[str]:
    return ["--modality", "image", "--image-column", "image", "--text-column", "text", "--id-column", "id",
            "--keep-columns", "source,label", "--image-model", model, "--image-pretrained", pretrained,
            "--shard-rows", "4096", "--quiet"]


def image_metrics(args, backbone):
    """metrics(W, test, domain): image → caption retrieval and balanced zero-shot classification."""
    import torch

    from albat.pipeline.image_encoder import image_encoder_from_identity
    from albat.pipeline.surrogates.contrastive import adapt

    distractor_captions = backbone.vectors_for_ids(fixed_sample(backbone, args.distractors, seed=1234), side="pair")
    pool = pq.read_table(args.data / "pool.parquet", columns=["id", "label"])
    labels = sorted(set(pool.column("label").to_pylist()))
    prompts = image_encoder_from_identity(backbone.info["encoder"]).encode_texts([prompt(c, args.prompt) for c in labels])
    ids, pool_labels = pool.column("id").to_numpy(), np.array(pool.column("label").to_pylist())

    def others(label: str, size: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.flatnonzero(pool_labels != label)
        rows = np.sort(np.random.default_rng([99, size]).choice(rows, size=size, replace=False))
        return backbone.vectors_for_ids(ids[rows]), np.array([labels.index(c) for c in pool_labels[rows]])

    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def metrics(W, test, domain: dict) -> dict[str, float]:
        r1, mrr = retrieval(W, test.doc, test.query, distractor_captions)
        label = domain["filter"]["label"]
        if label not in cache:
            cache[label] = others(label, args.zeroshot_others)
        other_images, other_truth = cache[label]
        images = np.concatenate([test.doc, other_images])
        truth = np.concatenate([np.full(len(test.doc), labels.index(label)), other_truth])
        with torch.no_grad():
            scores = (adapt(torch.from_numpy(images), W) @ adapt(torch.from_numpy(prompts), W).T).numpy()
        target = labels.index(label)
        balanced = np.r_[np.arange(len(test.doc)), len(test.doc) + np.arange(min(len(test.doc), len(other_truth)))]
        correct = scores[balanced].argmax(1) == truth[balanced]
        return {"recall1": r1, "mrr": mrr, "zeroshot_auc": roc_auc(scores[:, target], truth == target),
                "zeroshot": float(correct.mean()), "zeroshot_target": float(correct[:len(test.doc)].mean())}
    return metrics


def embed_speed(args, model: str, pretrained: str) -> dict[str, float]:
    """Images/s of `albat embed` on the first --speed-images pool images (a fresh work directory; wall
    clock of the stage call) and of open_clip's bare loop over the same images."""
    import torch
    from PIL import Image

    from albat.pipeline.image_encoder import ImageEncoder

    pool = pq.read_table(args.data / "pool.parquet").slice(0, args.speed_images)
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "sample.parquet"
        absolute = pool.column("image").to_pylist()
        pq.write_table(pool, sample)
        started = time.perf_counter()
        run("embed", "--work", Path(tmp) / "work", "--input", sample, *image_embed_args(model, pretrained))
        pipeline = time.perf_counter() - started
    encoder = ImageEncoder(name=model, pretrained=pretrained, batch_size=128)
    encoder.encode([Image.new("RGB", (32, 32))])  # load the model outside the clock, as the stage's probe does
    started = time.perf_counter()
    preprocess = encoder.preprocess
    batch = []
    for path in absolute:
        with Image.open(path) as im:
            batch.append(preprocess(im.convert("RGB")))
        if len(batch) == 128:
            encoder.encode(torch.stack(batch))
            batch = []
    if batch:
        encoder.encode(torch.stack(batch))
    bare = time.perf_counter() - started
    return {"images": len(absolute), "pipeline_s": pipeline, "bare_s": bare,
            "pipeline_rate": len(absolute) / pipeline, "bare_rate": len(absolute) / bare}


def zeroshot_table(records: list[dict], metric: str) -> tuple[list[str], list[list]]:
    """Mean ± std over seeds of one zero-shot metric per (domain, n_A, m) and method, frozen beside."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        k = r["key"]
        if k["method"] != "frozen":
            groups.setdefault((k["domain"], k["n_a"], k["m"], k["method"]), []).append(r[metric])
    frozen = {r["key"]["domain"]: r[metric] for r in records if r["key"]["method"] == "frozen"}
    methods = bench_select.method_columns(groups)
    rows = []
    for domain, n_a, m in sorted({key[:3] for key in groups}):
        cells = [domain, n_a, m, f"{frozen[domain]:.3f}" if domain in frozen else "-"]
        for method in methods:
            v = np.array(groups.get((domain, n_a, m, method), []))
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}" if len(v) else "-")
        rows.append(cells)
    return ["domain", "n_A", "m", "frozen"] + methods, rows


def extra_report(args, results_path: Path, speed: dict | None) -> None:
    """The zero-shot tables and the embed speed, in their own section."""
    records = [r for r in map(json.loads, results_path.read_text().splitlines())
               if r["key"].get("tag", "") == args.tag and "zeroshot_auc" in r]
    body = [f"Zero-shot detection of the target category: ROC AUC of each image's cosine to the prompt "
            f"\"{prompt('<category>', args.prompt)}\" of the target, separating the target's test images from "
            f"{args.zeroshot_others} backbone images of other categories (chance 0.5), mean ± std over seeds "
            f"{args.seeds}; same runs as the section above.", "",
            markdown_table(*zeroshot_table(records, "zeroshot_auc")), "",
            f"Zero-shot classification: accuracy over the target's test images and as many of those others, each "
            f"classified among the prompts of all the pool's categories (chance: one over their number):", "",
            markdown_table(*zeroshot_table(records, "zeroshot"))]
    if speed:
        body += ["", f"Embed stage against open_clip's own loop, same run, first {speed['images']} pool images "
                 "(decode + preprocess + encode; the stage also hashes pixels, writes shards and records completion):", "",
                 markdown_table(["loop", "seconds", "images/s", "vs bare"],
                                [["open_clip bare loop (one process)", f"{speed['bare_s']:.1f}", f"{speed['bare_rate']:.0f}", "1.00x"],
                                 ["`albat embed --modality image` (fresh work directory, wall)", f"{speed['pipeline_s']:.1f}",
                                  f"{speed['pipeline_rate']:.0f}", f"{speed['pipeline_rate'] / speed['bare_rate']:.2f}x"]])]
    write_section(args.out, f"{args.section}-zeroshot{args.tag}", "Image track: zero-shot classification and embed speed",
                  "\n".join(body))


def main() -> None:
    parser = build_parser(__doc__.splitlines()[0])
    parser.set_defaults(data=Path("data/images_bench"), work=Path("work/bench_image"), sizes="8,32", ratios="4,16",
                        section="image", pool_factor=4.0, distractors=1000)
    parser.add_argument("--images", type=Path, default=Path("data/images"), help="scripts/fetch_images.py's output")
    parser.add_argument("--targets", default=TARGETS, help="comma-separated SOURCE/CATEGORY held out as targets")
    parser.add_argument("--adapt-pool", type=int, default=64, help="images per target the n_A are drawn from")
    parser.add_argument("--test", type=int, default=64, help="test images per target")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--clip-epochs", type=int, default=8, help="epochs of our own small CLIP's pre-training (cached by content hash)")
    parser.add_argument("--clip-model", default="", help="open_clip config .json or model name (default: pre-train ours)")
    parser.add_argument("--clip-pretrained", default="", help="its checkpoint file or pretrained tag")
    parser.add_argument("--prompt", default=PROMPT, help="zero-shot prompt template; {} is the category")
    parser.add_argument("--zeroshot-others", type=int, default=512, help="images of other categories in zero-shot detection")
    parser.add_argument("--speed-images", type=int, default=2048, help="images timed for the embed speed (0: skip)")
    args = parser.parse_args()
    targets = [tuple(t.split("/", 1)) for t in args.targets.split(",") if t]
    heldout = prepare(args.images, args.data, targets, args.adapt_pool, args.test, args.split_seed)
    model, pretrained = args.clip_model, args.clip_pretrained
    if not model:
        from benchmarks.bench_lm import _script

        clip_dir = _script("pretrain_clip").pretrain_clip(args.images / "pool", args.work / "clip",
                                                          epochs=args.clip_epochs, exclude=tuple(heldout))
        model, pretrained = str(clip_dir / "albat-clip-small.json"), str(clip_dir / "checkpoint.pt")
    track = Track(embed_args=image_embed_args(model, pretrained), query_args=[], make_metrics=image_metrics,
                  describe="Held-out image → caption retrieval MRR (each test image against the target's test captions "
                           "plus {distractors} backbone captions)",
                  title="Image track (`make bench-image`)", section="image")
    speed_path = args.work / "embed_speed.json"
    if not args.report_only and args.speed_images and not speed_path.exists():
        args.work.mkdir(parents=True, exist_ok=True)
        bench_select.build_stores(args.data, args.work, json.loads((args.data / "domains.json").read_text()),
                                  track.embed_args)  # the pool's first embed loads the model and data once
        speed_path.write_text(json.dumps(embed_speed(args, model, pretrained)) + "\n")
    bench_select.main(args, track)
    extra_report(args, args.work / "results.jsonl", json.loads(speed_path.read_text()) if speed_path.exists() else None)


if __name__ == "__main__":
    main()
