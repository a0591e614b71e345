"""Choose a FAISS index for a corpus size, a dimension and a memory budget (pure functions).

Memory formulas (bytes, FAISS CPU, float32 vectors, int64 ids):
    Flat + IDMap2      n*(4d + 8) + n*ID_MAP_ENTRY      (the id->row hash map of IndexIDMap2)
    IVF{L},Flat        n*(4d + 8) + L*4d                (inverted lists hold vectors and ids)
    IVF{L},PQ{m}x8     n*(m + 8) + L*4d + 256*4d        (m-byte codes, ids, centroids, PQ codebooks)
    HNSW{M},Flat       n*(4d + 8M + 16)                 (vectors, 2M int32 links at level 0, levels)
L follows the usual rule nlist ~ 4*sqrt(n), a power of two, with >= 39 training points per list
among at most `train_points(budget, d)` training vectors: MAX_TRAIN_POINTS, and never more than the
budget holds in float32 (k-means cost and memory stay bounded by the budget, not by the corpus).

On disk (`on_disk`): the inverted lists are built per store shard and merged into one file
(FAISS's `contrib.ondisk.merge_ondisk`), memory-mapped by every later reader; what must fit the
budget is what stays resident: the centroids (and PQ codebooks) and one shard's lists while it is
built, `resident_bytes`. The file itself takes the in-memory formula's bytes on disk.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

ID_MAP_ENTRY = 40  # bytes per entry of std::unordered_map<int64, int64>, measured order of magnitude
MIN_POINTS_PER_CENTROID = 39
MAX_TRAIN_POINTS = 1_000_000  # 1.5 GB of float32 at d=384
HNSW_M = 32  # links per node (FAISS's HNSW32): about 0.95 recall@10 reachable with efSearch <= 256 on text embeddings


@dataclass(frozen=True)
class IndexPlan:
    key: str  # FAISS index_factory string (wrapped in IDMap2 for Flat)
    kind: str  # flat | ivf_flat | ivf_pq
    nlist: int
    pq_m: int
    estimated_bytes: int  # memory the index holds (on disk: what stays resident)
    reason: str
    on_disk: bool = False  # inverted lists merged into index/knn.ivfdata and memory-mapped
    train_points: int = MAX_TRAIN_POINTS  # cap of the k-means training sample
    disk_bytes: int = 0  # size of the on-disk lists

    def to_dict(self) -> dict:
        return asdict(self)


def flat_bytes(n: int, d: int) -> int:
    return n * (4 * d + 8) + n * ID_MAP_ENTRY


def ivf_flat_bytes(n: int, d: int, nlist: int) -> int:
    return n * (4 * d + 8) + nlist * 4 * d


def ivf_pq_bytes(n: int, d: int, nlist: int, m: int) -> int:
    return n * (m + 8) + nlist * 4 * d + 256 * 4 * d


def hnsw_bytes(n: int, d: int, m: int = HNSW_M) -> int:
    return n * (4 * d + 8 * m + 16)


def resident_bytes(d: int, nlist: int, pq_m: int, shard_rows: int) -> int:
    """On disk: centroids, PQ codebooks and one shard's inverted-list entries (codes and ids)."""
    code = pq_m if pq_m else 4 * d
    return nlist * 4 * d + (256 * 4 * d if pq_m else 0) + shard_rows * (code + 8)


def train_points(memory_budget: int, d: int) -> int:
    """The training sample's cap: MAX_TRAIN_POINTS, and no more float32 vectors than the budget holds."""
    return max(1, min(MAX_TRAIN_POINTS, memory_budget // (4 * d)))


def choose_nlist(n: int, max_train_points: int = MAX_TRAIN_POINTS) -> int:
    """Power of two near 4*sqrt(n), capped so every list gets MIN_POINTS_PER_CENTROID training points."""
    if min(n, max_train_points) < 2 * MIN_POINTS_PER_CENTROID:
        return 1
    target = 2 ** round(math.log2(4 * math.sqrt(n)))
    cap = 2 ** int(math.log2(min(n, max_train_points) // MIN_POINTS_PER_CENTROID))
    return max(1, min(target, cap))


def pq_m_candidates(d: int) -> list[int]:
    """Sub-quantizer counts that divide d, largest (most accurate) first."""
    options = {d // 2, d // 4, 96, 64, 48, 32, 24, 16, 12, 8, 4}
    return sorted((m for m in options if m >= 1 and d % m == 0 and m <= d), reverse=True)


def plan_index(n: int, d: int, memory_budget: int, flat_max_rows: int = 1_000_000, index_type: str = "auto",
               on_disk: bool = False, shard_rows: int = 0) -> IndexPlan:
    """Exact flat search while the corpus is small and fits, else IVF-Flat, else the largest IVF-PQ
    that fits. `index_type`: "flat", "ivf" or "hnsw" asks for that kind (an error if it does not
    fit); `on_disk`: IVF lists on disk, so only `resident_bytes` (one `shard_rows` shard) must fit."""
    if n <= 0:
        raise ValueError("cannot plan an index for an empty store")
    flat = flat_bytes(n, d)
    if index_type == "hnsw":
        size = hnsw_bytes(n, d)
        if size > memory_budget:
            raise MemoryError(f"HNSW{HNSW_M},Flat needs {size} B for n={n}, d={d}, over the budget {memory_budget} B; "
                              "use --index-type auto")
        return IndexPlan(f"HNSW{HNSW_M},Flat", "hnsw", 0, 0, size, f"index_type=hnsw and {size} B fit the budget")
    if index_type in ("auto", "flat") and n <= (flat_max_rows if index_type == "auto" else n) and flat <= memory_budget:
        return IndexPlan("Flat", "flat", 0, 0, flat, f"n={n} <= {flat_max_rows} and {flat} B fit the budget")
    if index_type == "flat":
        raise MemoryError(f"Flat needs {flat} B for n={n}, d={d}, over the budget {memory_budget} B; use --index-type auto")
    cap = train_points(memory_budget, d)
    nlist = choose_nlist(n, cap)
    ivf = ivf_flat_bytes(n, d, nlist)
    resident = resident_bytes(d, nlist, 0, shard_rows) if on_disk else ivf
    where = f" (lists on disk, {ivf} B; resident {resident} B)" if on_disk else ""
    if resident <= memory_budget:
        return IndexPlan(f"IVF{nlist},Flat", "ivf_flat", nlist, 0, resident,
                         f"n={n} above the flat limit; uncompressed vectors fit{where or f' ({ivf} B)'}",
                         on_disk, cap, ivf if on_disk else 0)
    for m in pq_m_candidates(d):
        size = ivf_pq_bytes(n, d, nlist, m)
        resident = resident_bytes(d, nlist, m, shard_rows) if on_disk else size
        if resident <= memory_budget:
            return IndexPlan(f"IVF{nlist},PQ{m}x8", "ivf_pq", nlist, m, resident,
                             f"vectors do not fit ({ivf} B); {m}-byte PQ codes do ({size} B)", on_disk, cap,
                             size if on_disk else 0)
    m = pq_m_candidates(d)[-1]
    smallest = resident_bytes(d, nlist, m, shard_rows) if on_disk else ivf_pq_bytes(n, d, nlist, m)
    raise MemoryError(f"no index fits {memory_budget} B for n={n}, d={d}; the smallest needs {smallest} B")
