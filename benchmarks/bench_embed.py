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

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from benchmarks.report import markdown_table, write_section  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.embed import run_embed  # noqa: E402
from pipeline.encoders import TextEncoder, normalize_rows, set_threads  # noqa: E402
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
    plain_vectors = {}
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "subset.parquet"
        pq.write_table(table, subset)
        for dtype in args.dtypes.split(","):
            encoder = TextEncoder("all-MiniLM-L6-v2", dtype=dtype, batch_size=64)
            encoder.encode(texts[:64])  # load and warm up outside the timings
            started = time.perf_counter()
            plain_vectors[dtype] = normalize_rows(encoder.model.encode(texts, batch_size=64, convert_to_numpy=True,
                                                                       show_progress_bar=False).astype(np.float32))
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
    agreement = ""
    if {"float32", "bfloat16"} <= plain_vectors.keys():
        a, b = plain_vectors["float32"], plain_vectors["bfloat16"]
        cosine = np.einsum("ij,ij->i", a, b)
        top_a = np.argsort(-(a @ a.T), axis=1)[:, 1:11]
        top_b = np.argsort(-(b @ b.T), axis=1)[:, 1:11]
        overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(top_a, top_b)])
        agreement = (f"\n\nbfloat16 against float32 on the same texts: cosine between the two embeddings of a text "
                     f"mean {cosine.mean():.5f}, min {cosine.min():.5f}; overlap of the 10 nearest neighbours "
                     f"(among these {len(texts)} texts) {overlap:.3f}.")
    body = (f"all-MiniLM-L6-v2 (bundled), batch 64, max_seq_length 256, {len(texts)} Wikipedia summaries "
            f"(mean {mean_chars:.0f} characters), torch threads = all cores.\n\n"
            + markdown_table(["encoder dtype", "texts", "plain encode rows/s", "albat embed rows/s", "pipeline time vs plain"], rows)
            + "\n\nThe difference is the pipeline's own work: reading Parquet, sorting each shard by length, "
              "hashing texts, writing vectors and metadata with SHA-256 completion records, and the encoder "
              "probe. Plain `encode` gets all texts in one call (one global length sort)." + agreement)
    write_section(Path(args.out), "embed", "Embedding throughput: pipeline vs plain encode", body)
    print(body)


if __name__ == "__main__":
    main()
