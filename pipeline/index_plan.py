"""Choose a FAISS index for a corpus size, a dimension and a memory budget (pure functions).

Memory formulas (bytes, FAISS CPU, float32 vectors, int64 ids):
    Flat + IDMap2      n*(4d + 8) + n*ID_MAP_ENTRY      (the id->row hash map of IndexIDMap2)
    IVF{L},Flat        n*(4d + 8) + L*4d                (inverted lists hold vectors and ids)
    IVF{L},PQ{m}x8     n*(m + 8) + L*4d + 256*4d        (m-byte codes, ids, centroids, PQ codebooks)
L follows the usual rule nlist ~ 4*sqrt(n), a power of two, with >= 39 training points per list
among at most MAX_TRAIN_POINTS training vectors (k-means cost and memory stay bounded).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

ID_MAP_ENTRY = 40  # bytes per entry of std::unordered_map<int64, int64>, measured order of magnitude
MIN_POINTS_PER_CENTROID = 39
MAX_TRAIN_POINTS = 1_000_000  # 1.5 GB of float32 at d=384


@dataclass(frozen=True)
class IndexPlan:
    key: str  # FAISS index_factory string (wrapped in IDMap2 for Flat)
    kind: str  # flat | ivf_flat | ivf_pq
    nlist: int
    pq_m: int
    estimated_bytes: int
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def flat_bytes(n: int, d: int) -> int:
    return n * (4 * d + 8) + n * ID_MAP_ENTRY


def ivf_flat_bytes(n: int, d: int, nlist: int) -> int:
    return n * (4 * d + 8) + nlist * 4 * d


def ivf_pq_bytes(n: int, d: int, nlist: int, m: int) -> int:
    return n * (m + 8) + nlist * 4 * d + 256 * 4 * d


def choose_nlist(n: int, max_train_points: int = MAX_TRAIN_POINTS) -> int:
    """Power of two near 4*sqrt(n), capped so every list gets MIN_POINTS_PER_CENTROID training points."""
    if n < 2 * MIN_POINTS_PER_CENTROID:
        return 1
    target = 2 ** round(math.log2(4 * math.sqrt(n)))
    cap = 2 ** int(math.log2(min(n, max_train_points) // MIN_POINTS_PER_CENTROID))
    return max(1, min(target, cap))


def pq_m_candidates(d: int) -> list[int]:
    """Sub-quantizer counts that divide d, largest (most accurate) first."""
    options = {d // 2, d // 4, 96, 64, 48, 32, 24, 16, 12, 8, 4}
    return sorted((m for m in options if m >= 1 and d % m == 0 and m <= d), reverse=True)


def plan_index(n: int, d: int, memory_budget: int, flat_max_rows: int = 1_000_000) -> IndexPlan:
    """Exact flat search while the corpus is small and fits, else IVF-Flat, else the largest IVF-PQ that fits."""
    if n <= 0:
        raise ValueError("cannot plan an index for an empty store")
    flat = flat_bytes(n, d)
    if n <= flat_max_rows and flat <= memory_budget:
        return IndexPlan("Flat", "flat", 0, 0, flat, f"n={n} <= {flat_max_rows} and {flat} B fit the budget")
    nlist = choose_nlist(n)
    ivf = ivf_flat_bytes(n, d, nlist)
    if ivf <= memory_budget:
        return IndexPlan(f"IVF{nlist},Flat", "ivf_flat", nlist, 0, ivf,
                         f"n={n} above the flat limit; uncompressed vectors fit ({ivf} B)")
    for m in pq_m_candidates(d):
        size = ivf_pq_bytes(n, d, nlist, m)
        if size <= memory_budget:
            return IndexPlan(f"IVF{nlist},PQ{m}x8", "ivf_pq", nlist, m, size,
                             f"vectors do not fit ({ivf} B); {m}-byte PQ codes do ({size} B)")
    smallest = ivf_pq_bytes(n, d, nlist, pq_m_candidates(d)[-1])
    raise MemoryError(f"no index fits {memory_budget} B for n={n}, d={d}; the smallest needs {smallest} B")
