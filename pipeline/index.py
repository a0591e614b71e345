"""Stage 2, index: build the FAISS index the plan chooses, tune nprobe, measure recall@k."""
from __future__ import annotations

import re
import resource
import time
from typing import Any

import numpy as np

from pipeline.index_plan import MAX_TRAIN_POINTS, IndexPlan, plan_index
from pipeline.progress import progress_bar
from pipeline.stage import Plan, Stage
from stores.embedding_store import EmbeddingStore
from stores.errors import AlbatError
from stores.index_store import INDEX_FILE, INFOS_FILE, LABELS, write_index
from stores.workdir import fingerprint

TRAIN_POINTS_PER_LIST = 64


def exact_search(store: EmbeddingStore, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k over the store, one shard in memory at a time; the labels are row
    positions (as in the index), -1 where fewer than k rows exist."""
    import faiss

    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    offset = 0
    for _, ids, vectors in store.iter_shards():
        kk = min(k, len(ids))
        D, I = faiss.knn(queries, np.ascontiguousarray(vectors), kk, metric=faiss.METRIC_INNER_PRODUCT)
        found = np.where(I >= 0, I + offset, -1).astype(np.int64)
        offset += len(ids)
        if kk < k:
            pad = k - kk
            D = np.hstack([D, np.full((len(D), pad), -np.inf, np.float32)])
            found = np.hstack([found, np.full((len(D), pad), -1, np.int64)])
        heap.add_result(D, found)
    heap.finalize()
    return heap.D, heap.I


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact top-k rows the approximate search returned (k-recall@k); labels
    are row positions, so -1 (FAISS: no result) is never a real one."""
    k = exact.shape[1]
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) / k for a, e in zip(approx, exact)]
    return float(np.mean(hits)) if hits else 0.0


_IVF_PART = re.compile(r"^IVF(\d+)(?:_.*)?$")


def forced_plan(key: str) -> IndexPlan:
    """Describe a user-given factory string: Flat, or any key with one IVF{nlist} part."""
    if key == "Flat":
        return IndexPlan("Flat", "flat", 0, 0, 0, "forced by index_key")
    lists = [int(m.group(1)) for part in key.split(",") if (m := _IVF_PART.match(part))]
    if len(lists) != 1:
        raise AlbatError(f"index key '{key}' is not supported: use Flat or an IVF index (e.g. IVF1024,Flat, "
                         "IVF4096,PQ48x8), or drop --index-key to let albat plan")
    kind = "ivf_pq" if "PQ" in key.split(",")[-1] else "ivf_flat"
    return IndexPlan(key, kind, lists[0], 0, 0, "forced by index_key")


def _plan(options: dict[str, Any], n: int, d: int) -> IndexPlan:
    if options.get("index_key"):
        return forced_plan(str(options["index_key"]))
    try:
        return plan_index(n, d, int(options["memory_budget_bytes"]), int(options["flat_max_rows"]))
    except MemoryError as exc:
        raise AlbatError(f"{exc}; raise --memory-budget") from None


def build_index(store: EmbeddingStore, plan: IndexPlan, seed: int, show_progress: bool) -> tuple[Any, float]:
    """Train (IVF) on a seeded sample, then add shard by shard with the store's ids."""
    import faiss

    n, d = int(store.info["rows"]), store.dim
    if plan.kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        train_seconds = 0.0
    else:
        try:
            index = faiss.index_factory(d, plan.key, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError:
            raise AlbatError(f"'{plan.key}' is not a FAISS index factory string for dimension {d}; "
                             "see the FAISS index_factory docs, or drop --index-key") from None
        rng = np.random.default_rng(seed)
        n_train = min(n, max(plan.nlist * TRAIN_POINTS_PER_LIST, 10_000), MAX_TRAIN_POINTS)
        sample = np.sort(rng.choice(n, size=n_train, replace=False))
        started = time.perf_counter()
        try:
            index.train(store.vectors_at(sample))
        except RuntimeError as exc:
            raise AlbatError(f"FAISS cannot train {plan.key} on {n_train} vectors ({str(exc).splitlines()[0][:200]}); "
                             "drop --index-key to let albat plan, or choose fewer lists/PQ bits") from None
        train_seconds = time.perf_counter() - started
    with progress_bar(total=n, desc="index", enabled=show_progress) as bar:
        offset = 0
        for _, ids, vectors in store.iter_shards():  # labels: row positions (FAISS's -1 means "no result")
            index.add_with_ids(np.ascontiguousarray(vectors), np.arange(offset, offset + len(ids), dtype=np.int64))
            offset += len(ids)
            bar.update(len(ids))
    return index, train_seconds


def tune_nprobe(index: Any, queries: np.ndarray, exact_ids: np.ndarray, k: int, target: float) -> tuple[int, list[dict]]:
    """Smallest power-of-two nprobe whose recall reaches the target (else the best measured)."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    curve = []
    nprobe = 1
    while nprobe <= ivf.nlist:
        ivf.nprobe = nprobe
        started = time.perf_counter()
        _, I = index.search(queries, k)
        elapsed = time.perf_counter() - started
        curve.append({"nprobe": nprobe, "recall": recall_at_k(I, exact_ids),
                      "queries_per_s": len(queries) / max(elapsed, 1e-9)})
        if curve[-1]["recall"] >= target:
            break
        nprobe *= 2
    best = next((c for c in curve if c["recall"] >= target), max(curve, key=lambda c: c["recall"]))
    ivf.nprobe = best["nprobe"]
    return best["nprobe"], curve


def index_fingerprint(store_info: dict[str, Any], options: dict[str, Any], seed: int) -> str:
    keys = ("memory_budget_bytes", "index_key", "flat_max_rows", "recall_k", "recall_queries", "target_recall")
    return fingerprint({"store": store_info["fingerprint"], "rows": store_info["rows"], "seed": seed, "labels": LABELS,
                        **{k: options[k] for k in keys}})


class IndexStage(Stage):
    name = "index"

    def plan(self) -> Plan:
        options, seed = self.config["index"], int(self.config["seed"])
        store = EmbeddingStore(self.work.store)
        info = store.require_complete()
        outputs = (self.work.index / INDEX_FILE, self.work.index / INFOS_FILE)
        return Plan(index_fingerprint(info, options, seed), outputs, options, {"store": store, "info": info, "seed": seed})

    def compute(self, plan: Plan) -> tuple[Any, dict[str, Any]]:
        options, store, info, seed = plan.recorded, plan.inputs["store"], plan.inputs["info"], plan.inputs["seed"]
        n, d = int(info["rows"]), int(info["dim"])
        index_plan = _plan(options, n, d)
        started = time.perf_counter()
        index, train_seconds = build_index(store, index_plan, seed, self.show_progress)
        build_seconds = time.perf_counter() - started

        k = min(int(options["recall_k"]), n)
        rng = np.random.default_rng(seed + 1)
        positions = np.sort(rng.choice(n, size=min(int(options["recall_queries"]), n), replace=False))
        queries = store.vectors_at(positions)
        _, exact_ids = exact_search(store, queries, k)
        nprobe, curve = None, []
        if index_plan.kind != "flat":
            nprobe, curve = tune_nprobe(index, queries, exact_ids, k, float(options["target_recall"]))
        started = time.perf_counter()
        _, approx_ids = index.search(queries, k)
        search_seconds = time.perf_counter() - started
        infos = {"index_key": index_plan.key, "kind": index_plan.kind, "nlist": index_plan.nlist,
                 "pq_m": index_plan.pq_m, "reason": index_plan.reason, "rows": n, "dim": d, "metric": "inner_product",
                 "memory_budget_bytes": int(options["memory_budget_bytes"]),
                 "estimated_bytes": index_plan.estimated_bytes, "build_seconds": round(build_seconds, 3),
                 "train_seconds": round(train_seconds, 3), "nprobe": nprobe, "nprobe_curve": curve,
                 "recall_k": k, "recall_queries": len(queries), "recall_at_k": recall_at_k(approx_ids, exact_ids),
                 "queries_per_s": round(len(queries) / max(search_seconds, 1e-9), 1),
                 "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                 "seed": seed, "store_fingerprint": info["fingerprint"], "encoder": info["encoder"]["name"],
                 "labels": LABELS}
        return index, infos

    def write(self, plan: Plan, computed: tuple[Any, dict[str, Any]]) -> dict[str, Any]:
        index, infos = computed
        write_index(index, self.work.index, infos)
        return {k: infos[k] for k in ("index_key", "rows", "recall_at_k", "recall_k", "nprobe", "build_seconds")}
