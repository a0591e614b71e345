"""Selection methods: knn round-robin order and selection, uniform random draws, the registry."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from albat.pipeline.methods.base import SelectionRequest, get_method
from albat.pipeline.methods.knn import KnnMethod, round_robin_order
from albat.pipeline.methods.random_method import RandomMethod, uniform_draw
from albat.pipeline.query import aggregate_candidates, merge_blocked
from albat.stores.embedding_store import ID, EmbeddingStore
from albat.stores.errors import AlbatError


# ----- round_robin_order -----------------------------------------------------------------------
def test_round_robin_order_by_hand():
    # pair index: (query, rank, id)            -- deliberately not in (rank, query) order
    pairs = [(1, 2, 21),   # 0
             (0, 1, 11),   # 1
             (1, 0, 11),   # 2  q1's rank-0 is 11: taken here, so q0's rank-1 (pair 1) is a duplicate
             (0, 0, 10),   # 3
             (1, 1, 20),   # 4  disallowed
             (0, 2, 12)]   # 5
    q = np.array([p[0] for p in pairs])
    rank = np.array([p[1] for p in pairs])
    ids = np.array([p[2] for p in pairs])
    allowed = ids != 20
    # rank 0: q0 -> pair 3 (10), q1 -> pair 2 (11)
    # rank 1: q0 -> pair 1 (11, already taken), q1 -> pair 4 (20, disallowed)
    # rank 2: q0 -> pair 5 (12), q1 -> pair 0 (21)
    assert round_robin_order(q, rank, ids, allowed).tolist() == [3, 2, 5, 0]


def test_round_robin_order_three_queries_uneven_lists():
    # q0 has 3 neighbours, q1 one, q2 two; ids 7 shared by q0 (rank 2) and q2 (rank 0)
    q = np.array([0, 0, 0, 1, 2, 2])
    rank = np.array([0, 1, 2, 0, 0, 1])
    ids = np.array([5, 6, 7, 8, 7, 9])
    allowed = np.ones(6, bool)
    # rank 0: q0 5 (0), q1 8 (3), q2 7 (4); rank 1: q0 6 (1), q2 9 (5); rank 2: q0 7 (dup)
    assert round_robin_order(q, rank, ids, allowed).tolist() == [0, 3, 4, 1, 5]
    allowed[3] = False
    assert round_robin_order(q, rank, ids, allowed).tolist() == [0, 4, 1, 5]


def test_round_robin_order_nothing_allowed():
    q, rank, ids = np.array([0, 1]), np.array([0, 0]), np.array([1, 2])
    assert round_robin_order(q, rank, ids, np.zeros(2, bool)).tolist() == []


# ----- KnnMethod.select ------------------------------------------------------------------------
BLOCK_REASON = "exact duplicate of exclude example 0"


def _knn_request(budget: int) -> SelectionRequest:
    rows = [  # query, rank, candidate id, similarity
        (0, 0, 100, 0.90), (0, 1, 101, 0.80), (0, 2, 102, 0.70),
        (1, 0, 200, 0.95), (1, 1, 100, 0.85), (1, 2, 201, 0.60),
        (2, 0, 300, 0.99), (2, 1, 301, 0.50), (2, 2, 200, 0.40),
    ]
    pairs = pa.table({"candidate_id": pa.array([r[2] for r in rows], pa.int64()),
                      "query_idx": pa.array([r[0] for r in rows], pa.int32()),
                      "rank": pa.array([r[1] for r in rows], pa.int32()),
                      "similarity": pa.array([r[3] for r in rows], pa.float32())})
    blocked = merge_blocked({300: (1.0, BLOCK_REASON)})
    candidates = aggregate_candidates(pairs, blocked)
    return SelectionRequest(candidates=candidates, pairs=pairs, blocked_ids=blocked.column("id").to_numpy(),
                            store=None, adaptation_texts=["a", "b", "c"],
                            adaptation_vectors=np.zeros((3, 4), np.float32), budget=budget, seed=0)


# Round robin by hand: rank 0: 100 (q0), 200 (q1), [300 blocked]; rank 1: 101 (q0), [100 taken], 301 (q2);
# rank 2: 102 (q0), 201 (q1), [200 taken]  ->  100, 200, 101, 301, 102, 201 (6 selectable)
EXPECTED_ORDER = [100, 200, 101, 301, 102, 201]
EXPECTED_QUERY = {100: 0, 200: 1, 101: 0, 301: 2, 102: 0, 201: 1}


@pytest.mark.parametrize("budget", [0, 1, 4, 6])
def test_knn_select_keeps_budget_in_round_robin_order(budget):
    request = _knn_request(budget)
    result = KnnMethod().select(request)
    ids = result.ids.tolist()
    assert sorted(ids) == [100, 101, 102, 200, 201, 300, 301]  # every candidate considered once
    assert int(result.keep.sum()) == budget
    kept = {int(i): int(r) for i, r, k in zip(result.ids, result.rank, result.keep) if k}
    assert kept == {cid: pos for pos, cid in enumerate(EXPECTED_ORDER[:budget])}
    for cid, keep, rank, reason, q in zip(ids, result.keep, result.rank, result.reason, result.query_idx):
        if keep:
            assert reason.startswith("kept:")
            assert q == EXPECTED_QUERY[cid]
        else:
            assert reason.startswith("rejected:")
            assert rank == -1
    table = result.to_table("knn")
    assert table.num_rows == 7 and set(table.column("method").to_pylist()) == {"knn"}


def test_knn_select_never_keeps_a_blocked_id_and_names_the_block():
    result = KnnMethod().select(_knn_request(6))  # every selectable candidate kept
    by_id = {int(i): (bool(k), r) for i, k, r in zip(result.ids, result.keep, result.reason)}
    keep, reason = by_id[300]
    assert not keep
    assert reason.startswith("rejected:") and BLOCK_REASON in reason
    assert all(k for cid, (k, _) in by_id.items() if cid != 300)


def test_knn_select_budget_rejections_say_budget():
    result = KnnMethod().select(_knn_request(4))
    by_id = {int(i): r for i, r in zip(result.ids, result.reason)}
    assert "budget 4" in by_id[102] and "budget 4" in by_id[201]


def test_knn_budget_larger_than_pool_raises():
    with pytest.raises(AlbatError, match="budget 7 exceeds the 6 selectable candidates"):
        KnnMethod().select(_knn_request(7))


# ----- uniform_draw ---------------------------------------------------------------------------
def test_uniform_draw_is_deterministic_per_seed():
    blocked = np.array([3, 17, 40])
    a = uniform_draw(1_000, 50, blocked, seed=11)
    b = uniform_draw(1_000, 50, blocked, seed=11)
    c = uniform_draw(1_000, 50, blocked, seed=12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(set(a.tolist()) ^ set(c.tolist())) > 0


@pytest.mark.parametrize("seed", range(20))
def test_uniform_draw_distinct_unblocked_in_range(seed):
    n, budget = 30, 12
    blocked = np.array([0, 1, 2, 5, 8, 13, 21, 29])
    draw = uniform_draw(n, budget, blocked, seed)
    assert len(draw) == budget
    assert len(set(draw.tolist())) == budget
    assert not np.isin(draw, blocked).any()
    assert ((draw >= 0) & (draw < n)).all()


def test_uniform_draw_can_take_every_unblocked_row():
    blocked = np.array([1, 4])
    draw = uniform_draw(6, 4, blocked, seed=0)
    assert sorted(draw.tolist()) == [0, 2, 3, 5]


def test_uniform_draw_budget_above_available_raises():
    with pytest.raises(AlbatError, match="budget 5 exceeds the 4 selectable"):
        uniform_draw(6, 5, np.array([1, 4]), seed=0)
    with pytest.raises(AlbatError):
        uniform_draw(3, 4, np.empty(0, np.int64), seed=0)


def test_uniform_draw_is_roughly_uniform():
    n, budget, draws = 20, 3, 4_000
    blocked = np.array([0, 7, 8, 19, 11])
    counts = np.zeros(n)
    for seed in range(draws):
        counts[uniform_draw(n, budget, blocked, seed)] += 1
    assert counts[blocked].sum() == 0
    free = np.setdiff1d(np.arange(n), blocked)
    expected = draws * budget / len(free)  # 800 each
    chi2 = float((((counts[free] - expected) ** 2) / expected).sum())
    # 14 degrees of freedom: mean 14, P(chi2 > 60) < 1e-6; a biased draw lands far above
    assert chi2 < 60, (chi2, counts[free])
    # the first draw is uniform too (a draw that always led with low positions would fail here)
    firsts = np.zeros(n)
    for seed in range(draws):
        firsts[uniform_draw(n, budget, blocked, seed)[0]] += 1
    expected_first = draws / len(free)
    assert float((((firsts[free] - expected_first) ** 2) / expected_first).sum()) < 60


# ----- RandomMethod.select on a real store ---------------------------------------------------
def test_random_method_never_draws_blocked_ids(tmp_path):
    rng = np.random.default_rng(0)
    ids = np.arange(40, dtype=np.int64) * 3 + 1000
    store = EmbeddingStore(tmp_path / "store")
    for i, (lo, hi) in enumerate([(0, 15), (15, 40)]):
        store.write_shard(i, rng.standard_normal((hi - lo, 4)).astype(np.float32),
                          pa.table({ID: pa.array(ids[lo:hi], pa.int64())}))
    store.write_info({"dim": 4, "rows": 40, "complete": True})
    blocked = ids[[0, 5, 20, 39]]
    candidates = pa.table({"candidate_id": pa.array([ids[1], ids[2], 99_999], pa.int64())})
    request = SelectionRequest(candidates=candidates, pairs=None, blocked_ids=blocked, store=store,
                               adaptation_texts=[], adaptation_vectors=np.zeros((0, 4), np.float32),
                               budget=36, seed=5)
    result = RandomMethod().select(request)
    kept = result.ids[result.keep]
    assert len(kept) == 36 and len(set(kept.tolist())) == 36
    assert set(kept.tolist()) == set(ids.tolist()) - set(blocked.tolist())  # all 36 free rows
    assert all(r.startswith("kept:") for r, k in zip(result.reason, result.keep) if k)
    assert all(r.startswith("rejected:") for r, k in zip(result.reason, result.keep) if not k)
    assert 99_999 in result.ids[~result.keep].tolist()


# ----- registry -----------------------------------------------------------------------------
def test_get_method_unknown_name():
    with pytest.raises(AlbatError) as info:
        get_method("nearest")
    assert "'nearest'" in str(info.value) and "knn" in str(info.value) and "random" in str(info.value)


def test_get_method_known_names():
    assert isinstance(get_method("knn"), KnnMethod) and get_method("knn").options == {}
    assert isinstance(get_method("random"), RandomMethod)


def test_a_method_without_options_refuses_any():
    with pytest.raises(AlbatError, match=r"method knn: unknown key 'alpha' \(known: none\)"):
        get_method("knn", alpha=0.5)
