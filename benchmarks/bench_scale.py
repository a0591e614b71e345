"""The index stage at a size where the planner leaves exact search: a synthetic store of N
clustered unit vectors (no encoder can embed a million texts on 2 CPU cores in a benchmark's
time), indexed by `albat index` in a separate process under a memory budget. Reports the plan,
build time, the process's peak RSS against the budget, index size and recall@10.

Synthetic vectors are not text embeddings: the recall here says the machinery works at this size,
not what recall a real corpus gets (the demo-corpus table does that)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.report import markdown_table, write_section
from stores.embedding_store import ID, ROW, SOURCE, TEXT_HASH, EmbeddingStore


# Runs the CLI in a child process and reports that process's own peak RSS on stderr.
CHILD = ("import resource, sys; from pipeline.cli import main; rc = main(sys.argv[1:]); "
         "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def synthetic_store(root: Path, n: int, d: int, shard_rows: int, seed: int) -> EmbeddingStore:
    """N unit vectors around 1000 random centres (noise comparable to the centre spread), sharded."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, d)).astype(np.float32)
    store = EmbeddingStore(root)
    store.write_info({"fingerprint": f"synthetic-{n}-{d}-{seed}", "complete": False, "dim": d,
                      "encoder": {"name": "synthetic", "dim": d}, "shard_rows": shard_rows})
    for index, start in enumerate(range(0, n, shard_rows)):
        rows = min(shard_rows, n - start)
        vectors = centres[rng.integers(0, len(centres), rows)] + 1.2 * rng.standard_normal((rows, d)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = np.arange(start, start + rows, dtype=np.int64)
        meta = pa.table({ID: ids, SOURCE: pa.array(["synthetic"] * rows), ROW: ids,
                         TEXT_HASH: rng.integers(-2**62, 2**62, rows), "text": pa.array([f"row {i}" for i in ids])})
        store.write_shard(index, vectors, meta)
    store.write_id_index()
    store.write_info({**store.info, "rows": n, "shards": len(store.shard_indices()), "complete": True})
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--configs", default="2GB:1000000,2GB:100000,512MB:1000000",
                        help="comma-separated BUDGET:FLAT_MAX_ROWS pairs")
    parser.add_argument("--out", default="BENCHMARKS.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        synthetic_store(Path(tmp) / "store", args.rows, args.dim, 65_536, seed=0)
        print(f"synthetic store: {args.rows} x {args.dim} in {time.perf_counter() - started:.0f} s", flush=True)
        for item in args.configs.split(","):
            budget, flat_max = item.split(":")
            work = Path(tmp)
            (work / "_stages").mkdir(exist_ok=True)
            (work / "_stages" / "index.json").unlink(missing_ok=True)
            started = time.perf_counter()
            result = subprocess.run([sys.executable, "-c", CHILD, "index", "--work", str(work), "--quiet",
                                     "--memory-budget", budget, "--flat-max-rows", flat_max],
                                    capture_output=True, text=True)
            wall = time.perf_counter() - started
            if result.returncode != 0:
                raise SystemExit(result.stderr)
            peak_kib = int(result.stderr.split("PEAK_RSS_KIB")[-1].split()[0])
            infos = json.loads((work / "index" / "index_infos.json").read_text())
            rows.append([budget, flat_max, infos["index_key"], f"{infos['estimated_bytes'] / 2**20:.0f}",
                         f"{infos['index_bytes'] / 2**20:.0f}",
                         f"{peak_kib / 1024:.0f}",
                         f"{infos['train_seconds']:.0f}", f"{infos['build_seconds']:.0f}", f"{wall:.0f}",
                         infos["nprobe"], f"{infos['recall_at_k']:.3f}", f"{infos['queries_per_s']:.0f}"])
            print(rows[-1], flush=True)
    body = (f"{args.rows:,} synthetic unit vectors x {args.dim} (1000 Gaussian clusters), 16 shards of 65,536, "
            "indexed by `albat index --memory-budget B` in its own process. Peak RSS is the whole process "
            "(Python, FAISS, the training sample, the index being filled). recall@10 is measured by the stage "
            "itself on 1000 corpus vectors against exact search (for PQ, before the query stage's exact re-ranking). "
            "The budget bounds the index, not the process: the interpreter and libraries (~200 MiB), the k-means "
            "training sample (up to 262,144 x 384 float32 = 384 MiB) and memory-mapped store pages (file-backed, "
            "reclaimable) come on top.\n\n"
            + markdown_table(["budget", "flat_max_rows", "index chosen", "planned MiB", "index file MiB", "peak RSS MiB",
                              "train s", "build s", "stage wall s", "nprobe", "recall@10", "queries/s"], rows))
    write_section(Path(args.out), "scale", "Index stage at 1M vectors under a memory budget", body)
    print(body)


if __name__ == "__main__":
    main()
