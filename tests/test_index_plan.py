"""albat.pipeline.index_plan: which index a corpus size, dimension and memory budget get.

Byte counts are recomputed here by hand from the formulas in the module docstring:
    Flat + IDMap2      n*(4d + 8) + n*40
    IVF{L},Flat        n*(4d + 8) + L*4d
    IVF{L},PQ{m}x8     n*(m + 8) + L*4d + 256*4d
    HNSW32,Flat        n*(4d + 8*32 + 16)
with L capped by the training sample, itself capped at budget // 4d points.
"""
from __future__ import annotations

import math

import pytest

from albat.pipeline.index_plan import (MAX_TRAIN_POINTS, MIN_POINTS_PER_CENTROID, choose_nlist, hnsw_bytes, plan_index,
                                       pq_m_candidates, resident_bytes, train_points)


def flat_by_hand(n: int, d: int) -> int:
    return n * (4 * d + 8) + n * 40


def ivf_flat_by_hand(n: int, d: int, nlist: int) -> int:
    return n * (4 * d + 8) + nlist * 4 * d


def ivf_pq_by_hand(n: int, d: int, nlist: int, m: int) -> int:
    return n * (m + 8) + nlist * 4 * d + 256 * 4 * d


# n = 1,000,000: 4*sqrt(n) = 4000, log2(4000) = 11.97 -> 2**12 = 4096; n // 39 = 25641 -> cap 2**14.
N, D, NLIST = 1_000_000, 384, 4096


def test_small_corpus_gets_flat():
    plan = plan_index(n=5_000, d=384, memory_budget=4 * 10**9)
    assert plan.kind == "flat"
    assert plan.key == "Flat"
    assert plan.nlist == 0 and plan.pq_m == 0
    assert plan.estimated_bytes == 5_000 * (4 * 384 + 8) + 5_000 * 40 == 7_920_000


def test_flat_limit_is_inclusive():
    assert plan_index(N, D, 4 * 10**9, flat_max_rows=N).kind == "flat"
    above = plan_index(N + 1, D, 4 * 10**9, flat_max_rows=N)
    assert above.kind == "ivf_flat"


def test_corpus_above_flat_max_rows_gets_ivf_flat():
    # n = 10,000: 4*sqrt(n) = 400 -> 2**9 = 512, but 10,000 // 39 = 256 caps it at 2**8.
    plan = plan_index(n=10_000, d=32, memory_budget=10**9, flat_max_rows=5_000)
    assert plan.kind == "ivf_flat"
    assert plan.key == "IVF256,Flat"
    assert plan.nlist == 256 and plan.pq_m == 0
    assert plan.estimated_bytes == 10_000 * (4 * 32 + 8) + 256 * 4 * 32 == 1_392_768


def test_million_rows_above_the_limit_gets_ivf4096_flat():
    plan = plan_index(N, D, memory_budget=4 * 10**9, flat_max_rows=500_000)
    assert plan.key == f"IVF{NLIST},Flat"
    assert plan.estimated_bytes == ivf_flat_by_hand(N, D, NLIST) == 1_550_291_456


def test_flat_over_budget_falls_back_to_ivf_flat_even_below_the_row_limit():
    # n=1000, d=384: flat = 1,584,000 B; nlist = min(2**7, 2**int(log2(25))=16) = 16;
    # IVF16,Flat = 1,544,000 + 16*1536 = 1,568,576 B.
    plan = plan_index(1_000, 384, memory_budget=1_570_000)
    assert plan.key == "IVF16,Flat"
    assert plan.estimated_bytes == 1_568_576


def test_tight_budget_gets_ivf_pq_with_the_largest_m_that_fits():
    # the training sample is capped by the budget: 100e6 // 1536 = 65,104 points -> 65104 // 39 = 1669
    # -> 2**10 = 1024 lists. IVF1024,PQm: 1e6*(m + 8) + 1024*1536 + 256*1536 = 1e6*(m+8) + 1,966,080
    #   m=96 -> 105,966,080 (over)   m=64 -> 73,966,080 (fits)
    budget = 100_000_000
    plan = plan_index(N, D, memory_budget=budget)
    assert plan.kind == "ivf_pq"
    assert plan.key == "IVF1024,PQ64x8"
    assert plan.nlist == 1024 and plan.pq_m == 64 and plan.train_points == 65_104
    assert plan.estimated_bytes == 73_966_080 == ivf_pq_by_hand(N, D, 1024, 64)
    assert ivf_pq_by_hand(N, D, 1024, 96) > budget  # the next larger m would not fit


# budgets within [1024*39*1536, 2048*39*1536) = [61,341,696, 122,683,392) keep 1024 lists
@pytest.mark.parametrize("budget, m", [(105_966_080, 96), (105_966_079, 64), (73_966_080, 64), (73_966_079, 48)])
def test_pq_m_is_the_largest_fitting_at_the_exact_boundary(budget, m):
    plan = plan_index(N, D, memory_budget=budget)
    assert plan.nlist == 1024 and plan.pq_m == m
    assert plan.estimated_bytes == 10**6 * (m + 8) + 1_966_080


def test_the_training_sample_is_capped_by_the_budget():
    assert train_points(4 * 10**9, D) == MAX_TRAIN_POINTS  # 4e9 // 1536 = 2.6M: the fixed cap binds
    assert train_points(512 * 2**20, D) == 349_525  # 536,870,912 // 1536
    plan = plan_index(N, D, memory_budget=512 * 2**20)
    assert plan.train_points * 4 * D <= 512 * 2**20
    assert plan.nlist * MIN_POINTS_PER_CENTROID <= plan.train_points  # 349,525 // 39 = 8962 -> 4096 (sqrt rule)
    assert plan.nlist == 4096


def test_impossible_budget_raises_memory_error():
    # 12,589,823 // 1536 = 8196 training points -> 210 per 39 -> 128 lists; the smallest plan is
    # PQ4: 1e6*12 + 128*1536 + 256*1536 = 12,589,824 B
    with pytest.raises(MemoryError, match="12589824"):
        plan_index(N, D, memory_budget=12_589_823)


def test_on_disk_only_the_resident_part_must_fit():
    # resident: 4096 centroids * 1536 + one 65,536-row shard of lists * (1536 + 8) = 107,479,040 B
    plan = plan_index(N, D, memory_budget=512 * 2**20, flat_max_rows=100_000, on_disk=True, shard_rows=65_536)
    assert (plan.key, plan.on_disk) == ("IVF4096,Flat", True)
    assert plan.estimated_bytes == resident_bytes(D, 4096, 0, 65_536) == 4096 * 1536 + 65_536 * 1544 == 107_479_040
    assert plan.disk_bytes == ivf_flat_by_hand(N, D, 4096) > 512 * 2**20  # in memory it would not fit
    in_memory = plan_index(N, D, memory_budget=512 * 2**20, flat_max_rows=100_000)
    assert in_memory.kind == "ivf_pq" and not in_memory.on_disk


def test_hnsw_is_planned_only_where_it_fits():
    # HNSW32: n*(4d + 8*32 + 16) = 1e6 * 1808
    assert plan_index(N, D, 2 * 10**9, index_type="hnsw").key == "HNSW32,Flat"
    assert hnsw_bytes(N, D) == 1_808_000_000
    with pytest.raises(MemoryError, match="1808000000"):
        plan_index(N, D, 1_807_999_999, index_type="hnsw")
    assert plan_index(5_000, D, 10**9, index_type="ivf").kind == "ivf_flat"  # ivf: never flat, however small


def test_empty_store_cannot_be_planned():
    with pytest.raises(ValueError):
        plan_index(0, 384, 10**9)


@pytest.mark.parametrize("n", [100, 1_000, 10_000, 24_000, 50_000, 100_000, 1_000_000, 10_000_000, 123_457_891])
def test_choose_nlist_power_of_two_near_4_sqrt_n_with_enough_points(n):
    nlist = choose_nlist(n)
    assert nlist >= 1
    assert nlist & (nlist - 1) == 0, "a power of two"
    assert n / nlist >= MIN_POINTS_PER_CENTROID == 39
    target = 4 * math.sqrt(n)
    # never above the nearest power of two to 4*sqrt(n) (it may be capped lower)
    assert nlist <= target * math.sqrt(2)
    if min(n, MAX_TRAIN_POINTS) // 39 >= 3 * target:  # no cap binds: nlist is the power of two nearest 4*sqrt(n)
        assert target / math.sqrt(2) <= nlist <= target * math.sqrt(2)


def test_choose_nlist_hand_values():
    assert choose_nlist(1_000_000) == 4096  # 4*1000 = 4000 ~ 2**12
    assert choose_nlist(65_536) == 1024  # 4*256 = 1024 exactly; 65536 // 39 = 1680 -> cap 1024
    assert choose_nlist(10_000) == 256  # 400 -> 512, capped by 10000 // 39 = 256
    assert choose_nlist(78) == 2  # 78 // 39 = 2
    assert choose_nlist(77) == 1  # fewer than two lists' worth of points
    assert choose_nlist(1) == 1


@pytest.mark.parametrize("d", [384, 768, 512, 1024, 32, 100, 7, 2])
def test_pq_m_candidates_divide_d_largest_first(d):
    cands = pq_m_candidates(d)
    assert cands, "at least one candidate"
    assert all(d % m == 0 and 1 <= m <= d for m in cands)
    assert cands == sorted(set(cands), reverse=True)


def test_pq_m_candidates_for_384_by_hand():
    # d//2 = 192, d//4 = 96, and every fixed option 96..4 divides 384
    assert pq_m_candidates(384) == [192, 96, 64, 48, 32, 24, 16, 12, 8, 4]
    # d = 100: 50, 25 and the fixed options dividing 100 (4)
    assert pq_m_candidates(100) == [50, 25, 4]


def test_plan_to_dict_round_trips_fields():
    plan = plan_index(N, D, memory_budget=100_000_000)
    d = plan.to_dict()
    assert d["key"] == plan.key and d["pq_m"] == 64 and d["nlist"] == 1024 and d["kind"] == "ivf_pq"


def test_choose_nlist_is_bounded_by_the_training_sample():
    # 4*sqrt(1e9) ~ 126491 -> 2**17 lists would need 5.1M training points; the sample is capped
    nlist = choose_nlist(10**9)
    assert nlist * MIN_POINTS_PER_CENTROID <= MAX_TRAIN_POINTS
    assert nlist == 2 ** int(math.log2(MAX_TRAIN_POINTS // MIN_POINTS_PER_CENTROID))
    assert choose_nlist(10**9, max_train_points=10**8) == 2**17
