"""Stage 2, index: build the FAISS index the plan chooses, tune nprobe, measure recall@k."""
from __future__ import annotations

import re
import resource
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from albat.pipeline.index_plan import MAX_TRAIN_POINTS, IndexPlan, plan_index
from albat.pipeline.progress import progress_bar
from albat.pipeline.stage import Plan, Stage
from albat.stores.embedding_store import EmbeddingStore
from albat.stores.errors import AlbatError
from albat.stores.index_store import INDEX_FILE, INFOS_FILE, IVFDATA_FILE, LABELS, fresh_staging, write_index
from albat.stores.workdir import fingerprint

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
    if key.startswith("HNSW"):
        return IndexPlan(key, "hnsw", 0, 0, 0, "forced by index_key")
    lists = [int(m.group(1)) for part in key.split(",") if (m := _IVF_PART.match(part))]
    if len(lists) != 1:
        raise AlbatError(f"index key '{key}' is not supported: use Flat, HNSW32,Flat or an IVF index (e.g. "
                         "IVF1024,Flat, IVF4096,PQ48x8), or drop --index-key to let albat plan")
    kind = "ivf_pq" if "PQ" in key.split(",")[-1] else "ivf_flat"
    return IndexPlan(key, kind, lists[0], 0, 0, "forced by index_key")


def _plan(options: dict[str, Any], n: int, d: int, shard_rows: int = 0) -> IndexPlan:
    on_disk = bool(options.get("on_disk"))
    if options.get("index_key"):
        plan = forced_plan(str(options["index_key"]))
        return replace(plan, on_disk=on_disk and plan.kind.startswith("ivf"))
    try:
        return plan_index(n, d, int(options["memory_budget_bytes"]), int(options["flat_max_rows"]),
                          str(options.get("index_type") or "auto"), on_disk, shard_rows)
    except MemoryError as exc:
        raise AlbatError(f"{exc}; raise --memory-budget") from None


def _new_index(plan: IndexPlan, d: int) -> Any:
    import faiss

    if plan.kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    try:
        return faiss.index_factory(d, plan.key, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError:
        raise AlbatError(f"'{plan.key}' is not a FAISS index factory string for dimension {d}; "
                         "see the FAISS index_factory docs, or drop --index-key") from None


def _train(index: Any, store: EmbeddingStore, plan: IndexPlan, seed: int) -> float:
    """k-means (and PQ) training on a seeded sample of at most `plan.train_points` stored vectors."""
    n = int(store.info["rows"])
    rng = np.random.default_rng(seed)
    n_train = min(n, max(plan.nlist * TRAIN_POINTS_PER_LIST, 10_000), MAX_TRAIN_POINTS, plan.train_points)
    sample = np.sort(rng.choice(n, size=n_train, replace=False))
    started = time.perf_counter()
    try:
        index.train(store.vectors_at(sample))
    except RuntimeError as exc:
        raise AlbatError(f"FAISS cannot train {plan.key} on {n_train} vectors ({str(exc).splitlines()[0][:200]}); "
                         "drop --index-key to let albat plan, or choose fewer lists/PQ bits") from None
    return time.perf_counter() - started


def build_index(store: EmbeddingStore, plan: IndexPlan, seed: int, show_progress: bool,
                staging: Path | None = None) -> tuple[Any, float]:
    """Train (IVF) on a seeded sample, then add shard by shard; labels are row positions (FAISS's
    -1 means "no result"). HNSW numbers rows in the order they are added: row positions too. On
    disk (`plan.on_disk`), each shard's lists are built alone in `staging` and merged there into
    IVFDATA_FILE, so at most one shard's lists are in memory."""
    index = _new_index(plan, store.dim)
    train_seconds = _train(index, store, plan, seed) if plan.kind.startswith("ivf") else 0.0
    if plan.on_disk:
        if staging is None:
            raise ValueError("an on-disk index needs a staging directory")
        return merge_shards_on_disk(index, store, staging, show_progress), train_seconds
    with progress_bar(total=int(store.info["rows"]), desc="index", enabled=show_progress) as bar:
        offset = 0
        for _, ids, vectors in store.iter_shards():
            vectors = np.ascontiguousarray(vectors)
            if plan.kind == "hnsw":
                index.add(vectors)
            else:
                index.add_with_ids(vectors, np.arange(offset, offset + len(ids), dtype=np.int64))
            offset += len(ids)
            bar.update(len(ids))
    return index, train_seconds


def merge_shards_on_disk(trained: Any, store: EmbeddingStore, staging: Path, show_progress: bool) -> Any:
    """FAISS's on-disk recipe (faiss.contrib.ondisk): one IVF index per store shard, filled from an
    empty copy of the trained one and written to `staging`; then `merge_ondisk` moves every list
    into one memory-mapped file (`staging/IVFDATA_FILE`) and points `trained`'s lists at it."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    parts, offset = [], 0
    with progress_bar(total=int(store.info["rows"]), desc="index", enabled=show_progress) as bar:
        for shard, ids, vectors in store.iter_shards():
            part = faiss.clone_index(trained)
            part.add_with_ids(np.ascontiguousarray(vectors), np.arange(offset, offset + len(ids), dtype=np.int64))
            parts.append(str(staging / f"part-{shard:05d}.index"))
            faiss.write_index(part, parts[-1])
            del part
            offset += len(ids)
            bar.update(len(ids))
    merge_ondisk(trained, parts, str(staging / IVFDATA_FILE))
    for part in parts:
        Path(part).unlink()
    return trained


def _tune(index: Any, queries: np.ndarray, exact_ids: np.ndarray, k: int, target: float, name: str, first: int,
          last: int, apply: Any) -> tuple[int, list[dict]]:
    """The smallest power-of-two setting from `first` to `last` (`apply(value)` sets it) whose recall@k
    reaches the target, else the best measured; returns it (applied) and the measured curve."""
    curve, value = [], first
    while value <= last:
        apply(value)
        started = time.perf_counter()
        _, I = index.search(queries, k)
        elapsed = time.perf_counter() - started
        curve.append({name: value, "recall": recall_at_k(I, exact_ids),
                      "queries_per_s": len(queries) / max(elapsed, 1e-9)})
        if curve[-1]["recall"] >= target:
            break
        value *= 2
    best = next((c for c in curve if c["recall"] >= target), max(curve, key=lambda c: c["recall"]))
    apply(best[name])
    return best[name], curve


def tune_ef_search(index: Any, queries: np.ndarray, exact_ids: np.ndarray, k: int, target: float) -> tuple[int, list[dict]]:
    """HNSW: the smallest power-of-two efSearch (from k, at most 4096) whose recall reaches the target."""
    return _tune(index, queries, exact_ids, k, target, "ef_search", max(16, 1 << (k - 1).bit_length()), 4096,
                 lambda ef: setattr(index.hnsw, "efSearch", ef))


def tune_nprobe(index: Any, queries: np.ndarray, exact_ids: np.ndarray, k: int, target: float) -> tuple[int, list[dict]]:
    """Smallest power-of-two nprobe whose recall reaches the target (else the best measured)."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    return _tune(index, queries, exact_ids, k, target, "nprobe", 1, ivf.nlist, lambda n: setattr(ivf, "nprobe", n))


def index_fingerprint(store_info: dict[str, Any], options: dict[str, Any], seed: int) -> str:
    keys = ("memory_budget_bytes", "index_key", "flat_max_rows", "recall_k", "recall_queries", "target_recall",
            "index_type", "on_disk")
    return fingerprint({"store": store_info["fingerprint"], "rows": store_info["rows"], "seed": seed, "labels": LABELS,
                        **{k: options[k] for k in keys}})


class IndexStage(Stage):
    name = "index"

    def plan(self) -> Plan:
        options, seed = self.config["index"], int(self.config["seed"])
        store = EmbeddingStore(self.work.store)
        info = store.require_complete()
        index_plan = _plan(options, int(info["rows"]), int(info["dim"]), int(info.get("shard_rows") or 0))
        outputs = (self.work.index / INDEX_FILE, self.work.index / INFOS_FILE,
                   *([self.work.index / IVFDATA_FILE] if index_plan.on_disk else []))
        return Plan(index_fingerprint(info, options, seed), outputs, options,
                    {"store": store, "info": info, "seed": seed, "plan": index_plan})

    def compute(self, plan: Plan) -> tuple[Any, dict[str, Any]]:
        options, store, info, seed = plan.recorded, plan.inputs["store"], plan.inputs["info"], plan.inputs["seed"]
        n, d = int(info["rows"]), int(info["dim"])
        index_plan = plan.inputs["plan"]
        staging = None
        if index_plan.on_disk:  # the lists are written as they are built: into a hidden staging folder
            staging = plan.inputs["staging"] = fresh_staging(self.work.index)
        started = time.perf_counter()
        index, train_seconds = build_index(store, index_plan, seed, self.show_progress, staging)
        build_seconds = time.perf_counter() - started

        k = min(int(options["recall_k"]), n)
        rng = np.random.default_rng(seed + 1)
        positions = np.sort(rng.choice(n, size=min(int(options["recall_queries"]), n), replace=False))
        queries = store.vectors_at(positions)
        _, exact_ids = exact_search(store, queries, k)
        nprobe, ef_search, curve = None, None, []
        if index_plan.kind.startswith("ivf"):
            nprobe, curve = tune_nprobe(index, queries, exact_ids, k, float(options["target_recall"]))
        elif index_plan.kind == "hnsw":
            ef_search, curve = tune_ef_search(index, queries, exact_ids, k, float(options["target_recall"]))
        started = time.perf_counter()
        _, approx_ids = index.search(queries, k)
        search_seconds = time.perf_counter() - started
        infos = {"index_key": index_plan.key, "kind": index_plan.kind, "nlist": index_plan.nlist,
                 "pq_m": index_plan.pq_m, "reason": index_plan.reason, "rows": n, "dim": d, "metric": "inner_product",
                 "memory_budget_bytes": int(options["memory_budget_bytes"]),
                 "estimated_bytes": index_plan.estimated_bytes, "build_seconds": round(build_seconds, 3),
                 "train_seconds": round(train_seconds, 3), "nprobe": nprobe, "nprobe_curve": curve,
                 "ef_search": ef_search, "on_disk": index_plan.on_disk, "disk_bytes": index_plan.disk_bytes,
                 "train_points": min(n, index_plan.train_points),
                 "recall_k": k, "recall_queries": len(queries), "recall_at_k": recall_at_k(approx_ids, exact_ids),
                 "queries_per_s": round(len(queries) / max(search_seconds, 1e-9), 1),
                 "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                 "seed": seed, "store_fingerprint": info["fingerprint"], "encoder": info["encoder"]["name"],
                 "labels": LABELS}
        return index, infos

    def write(self, plan: Plan, computed: tuple[Any, dict[str, Any]]) -> dict[str, Any]:
        index, infos = computed
        write_index(index, self.work.index, infos, plan.inputs.get("staging"))
        return {k: infos[k] for k in ("index_key", "rows", "recall_at_k", "recall_k", "nprobe", "build_seconds")}
