"""Embedding throughput of `albat embed` against plain `SentenceTransformer.encode` on the same
texts in the same process: the difference is the pipeline's overhead (reading, sharding, hashing,
writing, checksums). Texts: the demo's Wikipedia summaries."""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow.parquet as pq  # noqa: E402

from benchmarks.report import markdown_table, write_section  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.embed import run_embed  # noqa: E402
from pipeline.encoders import TextEncoder, set_threads  # noqa: E402
from stores.workdir import Workdir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", default="data/wiki/backbone.parquet")
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--out", default="BENCHMARKS.md")
    args = parser.parse_args()
    set_threads(0)
    table = pq.read_table(args.corpus).slice(0, args.rows)
    texts = table.column("text").to_pylist()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "subset.parquet"
        pq.write_table(table, subset)
        for dtype in args.dtypes.split(","):
            encoder = TextEncoder("all-MiniLM-L6-v2", dtype=dtype, batch_size=64)
            encoder.encode(texts[:64])  # load and warm up outside the timings
            started = time.perf_counter()
            encoder.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False)
            plain = time.perf_counter() - started
            work = Path(tmp) / f"work-{dtype}"
            config = load_config(None, {"work": str(work), "embed": {"input": [str(subset)], "dtype": dtype,
                                                                      "id_column": "id", "shard_rows": 1024}})
            started = time.perf_counter()
            run_embed(config, Workdir(work), show_progress=False)
            pipeline = time.perf_counter() - started
            rows.append([dtype, len(texts), f"{len(texts) / plain:.1f}", f"{len(texts) / pipeline:.1f}",
                         f"{(pipeline / plain - 1) * 100:+.1f}%"])
            shutil.rmtree(work)
    mean_chars = sum(map(len, texts)) / len(texts)
    body = (f"all-MiniLM-L6-v2 (bundled), batch 64, max_seq_length 256, {len(texts)} Wikipedia summaries "
            f"(mean {mean_chars:.0f} characters), torch threads = all cores.\n\n"
            + markdown_table(["encoder dtype", "texts", "plain encode rows/s", "albat embed rows/s", "pipeline time vs plain"], rows)
            + "\n\n`albat embed` sorts each shard longest-first before batching (less padding), which can make "
              "it faster than a plain `encode` call over unsorted chunks; plain `encode` sorts within its own call.")
    write_section(Path(args.out), "embed", "Embedding throughput: pipeline vs plain encode", body)
    print(body)


if __name__ == "__main__":
    main()
