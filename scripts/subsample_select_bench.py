"""A seeded uniform fraction of the selection benchmark's pool (same domains, adaptation and test splits).

Why: embedding the full 135k-pair pool takes about 1.5 hours on 2 shared cores; a fifth of it keeps every
domain's in-domain share (so `random` and `oracle` mean the same thing) at a fifth of the cost. Results on
it are a reduced benchmark and are labelled so (work/bench_fifth, BENCHMARKS.md section `select-fifth`).

    python scripts/subsample_select_bench.py --data data/select --out data/select_fifth --fraction 0.2
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/select"))
    parser.add_argument("--out", type=Path, default=Path("data/select_fifth"))
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=20261201)
    args = parser.parse_args()
    pool = pq.read_table(args.data / "pool.parquet")
    rows = np.sort(np.random.default_rng(args.seed).choice(pool.num_rows, int(pool.num_rows * args.fraction), replace=False))
    sample = pool.take(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    pq.write_table(sample, args.out / "pool.parquet")
    source, label = (np.array(sample.column(c).to_pylist()) for c in ("source", "label"))
    domains = json.loads((args.data / "domains.json").read_text())
    for d in domains:
        (args.out / d["slug"]).mkdir(exist_ok=True)
        for split in ("adapt", "test"):
            shutil.copy(args.data / d[split], args.out / d[split])
        mask = source == d["filter"]["source"]
        if d["filter"].get("label"):
            mask &= label == d["filter"]["label"]
        d["n_pool"] = int(mask.sum())
    (args.out / "domains.json").write_text(json.dumps(domains, indent=2))
    print(f"{args.out}: {len(rows)} of {pool.num_rows} pool pairs; in-domain left: "
          + ", ".join(f"{d['slug']} {d['n_pool']}" for d in domains))


if __name__ == "__main__":
    main()
