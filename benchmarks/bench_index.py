"""Index build time, memory and recall@k on the demo corpus's embedding store, for the index the
planner picks and for the IVF alternatives it would pick at larger sizes or smaller budgets."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.report import markdown_table, write_section
from albat.pipeline.index import build_index, exact_search, recall_at_k, tune_nprobe
from albat.pipeline.index_plan import IndexPlan, choose_nlist, flat_bytes, ivf_flat_bytes, ivf_pq_bytes, plan_index
from albat.pipeline.query import exact_pairs, top_k_per_query
from albat.stores.embedding_store import EmbeddingStore


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


RERANK = 4  # the query stage's default rerank_factor


def _id_matrix(pairs, n_queries: int, k: int) -> np.ndarray:
    ids = np.full((n_queries, k), -1, dtype=np.int64)
    ids[pairs.column("query_idx").to_numpy(), pairs.column("rank").to_numpy()] = pairs.column("candidate_id").to_numpy()
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default="work/demo/store")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", default="BENCHMARKS.md")
    args = parser.parse_args()
    import faiss

    store = EmbeddingStore(args.store)
    info = store.require_complete()
    n, d = int(info["rows"]), int(info["dim"])
    nlist = choose_nlist(n)
    plans = [plan_index(n, d, 4 * 10**9),
             IndexPlan(f"IVF{nlist},Flat", "ivf_flat", nlist, 0, ivf_flat_bytes(n, d, nlist), "forced"),
             IndexPlan(f"IVF{nlist},PQ48x8", "ivf_pq", nlist, 48, ivf_pq_bytes(n, d, nlist, 48), "forced"),
             IndexPlan(f"IVF{nlist},PQ16x8", "ivf_pq", nlist, 16, ivf_pq_bytes(n, d, nlist, 16), "forced")]
    rng = np.random.default_rng(1)
    positions = np.sort(rng.choice(n, size=min(args.queries, n), replace=False))
    queries = store.vectors_at(positions)
    started = time.perf_counter()
    _, exact = exact_search(store, queries, args.k)
    exact_seconds = time.perf_counter() - started
    rows = []
    for plan in plans:
        before = rss_bytes()
        started = time.perf_counter()
        index, train_seconds = build_index(store, plan, seed=0, show_progress=False)
        build = time.perf_counter() - started
        grown = rss_bytes() - before
        nprobe = "-"
        if plan.kind != "flat":
            nprobe, _ = tune_nprobe(index, queries, exact, args.k, 0.95)
        started = time.perf_counter()
        _, found = index.search(queries, args.k)
        search = time.perf_counter() - started
        reranked = "-"
        if plan.kind == "ivf_pq":  # what `albat query` delivers: k*RERANK neighbours re-ranked exactly
            pairs = top_k_per_query(exact_pairs(queries, index, args.k * RERANK, store), args.k)
            exact_ids = store.ids_at(exact.ravel()).reshape(exact.shape)  # exact search labels rows by position
            reranked = f"{recall_at_k(_id_matrix(pairs, len(queries), args.k), exact_ids):.3f}"
        size = len(faiss.serialize_index(index))
        rows.append([plan.key, f"{build:.2f}", f"{train_seconds:.2f}", f"{size / 2**20:.1f}",
                     f"{plan.estimated_bytes / 2**20:.1f}", f"{max(grown, 0) / 2**20:.1f}", nprobe,
                     f"{recall_at_k(found, exact):.3f}", reranked, f"{len(queries) / search:.0f}"])
        del index
    body = (f"Store: {n} vectors x {d} (all-MiniLM-L6-v2 on the demo's Wikipedia summaries). recall@{args.k} of "
            f"{len(queries)} corpus vectors against exact search (exact search itself: {exact_seconds:.2f} s). "
            "nprobe is the smallest power of two reaching recall 0.95 (else the best). The first row is the "
            "planner's choice for a 4GB budget. For PQ indexes, `albat query` retrieves k x 4 neighbours and "
            "re-ranks them with the stored float32 vectors; the re-ranked column measures that path.\n\n"
            + markdown_table(["index", "build s", "train s", "serialized MiB", "planned MiB (formula)",
                              "RSS growth MiB", "nprobe", f"recall@{args.k}", f"recall@{args.k} re-ranked (x{RERANK})",
                              "queries/s"], rows))
    scale = []
    for n_big in (10**6, 10**7, 10**8, 10**9):
        for budget in (4 * 10**9, 64 * 10**9):
            try:
                plan = plan_index(n_big, d, budget)
                scale.append([f"{n_big:.0e}", f"{budget / 10**9:.0f} GB", plan.key, f"{plan.estimated_bytes / 10**9:.2f} GB"])
            except MemoryError:
                scale.append([f"{n_big:.0e}", f"{budget / 10**9:.0f} GB", "none fits", f">{budget / 10**9:.0f} GB"])
    body += ("\n\nWhat the planner would choose at larger sizes (its formulas, not measured here; flat limit 1M "
             "rows; flat bytes for 1M: " + f"{flat_bytes(10**6, d) / 10**9:.2f} GB):\n\n"
             + markdown_table(["rows", "budget", "index", "planned memory"], scale))
    write_section(Path(args.out), "index", "Index build, memory and recall on the demo corpus", body)
    print(body)


if __name__ == "__main__":
    main()
