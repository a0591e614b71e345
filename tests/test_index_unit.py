"""albat.pipeline.index (exact search, recall, IVF build + nprobe tuning) and EmbeddingStore lookups,
on small stores written here with EmbeddingStore.write_shard and checked against brute-force numpy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from albat.pipeline.index import _plan, build_index, exact_search, recall_at_k, tune_nprobe
from albat.stores.embedding_store import ID, EmbeddingStore
from albat.stores.errors import AlbatError


def _normalised(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_store(root: Path, vectors: np.ndarray, ids: np.ndarray, sizes: list[int]) -> EmbeddingStore:
    """Write `vectors`/`ids` as consecutive shards of the given sizes, plus store.json."""
    assert sum(sizes) == len(vectors) == len(ids)
    store = EmbeddingStore(root)
    start = 0
    for index, size in enumerate(sizes):
        meta = pa.table({ID: pa.array(ids[start:start + size], pa.int64())})
        record = store.write_shard(index, vectors[start:start + size], meta)
        assert record["rows"] == size
        start += size
    store.write_info({"dim": int(vectors.shape[1]), "rows": int(len(vectors)), "complete": True,
                      "fingerprint": "test", "encoder": {"name": "none"}})
    return store


@pytest.fixture
def small_store(tmp_path):
    rng = np.random.default_rng(1234)
    n, d = 37, 16
    vectors = _normalised(rng.standard_normal((n, d)))
    ids = rng.choice(10**9, size=n, replace=False).astype(np.int64)  # non-contiguous, unsorted
    store = make_store(tmp_path / "store", vectors, ids, sizes=[7, 19, 5, 6])
    return store, vectors, ids


# ----- exact search ----------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 10, 37])
def test_exact_search_matches_brute_force_numpy(small_store, k):
    store, vectors, ids = small_store
    rng = np.random.default_rng(k)
    queries = np.vstack([vectors[[0, 10, 30]], _normalised(rng.standard_normal((4, vectors.shape[1])))])
    D, I = exact_search(store, queries, k)
    sims = queries @ vectors.T
    order = np.argsort(-sims, axis=1)[:, :k]
    assert I.shape == (len(queries), k) and D.shape == (len(queries), k)
    np.testing.assert_array_equal(I, order)  # labels are row positions; the store maps them to ids
    np.testing.assert_allclose(D, np.take_along_axis(sims, order, axis=1), rtol=1e-5, atol=1e-5)
    # a stored vector finds itself first
    np.testing.assert_array_equal(I[:3, 0], [0, 10, 30])


def test_exact_search_pads_when_k_exceeds_the_store(small_store):
    store, vectors, ids = small_store
    D, I = exact_search(store, vectors[:2], 40)
    assert I.shape == (2, 40)
    assert sorted(I[0, :37].tolist()) == list(range(len(ids)))
    assert (I[:, 37:] == -1).all()


# ----- recall --------------------------------------------------------------------------------
def test_recall_at_k_hand_examples():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(exact, exact) == 1.0
    half = np.array([[1, 2, 9, 10], [8, 7, 11, 12]])  # 2 of 4 in each row, order does not matter
    assert recall_at_k(half, exact) == 0.5
    mixed = np.array([[4, 3, 2, 1], [20, 21, 22, 23]])  # 1.0 and 0.0
    assert recall_at_k(mixed, exact) == 0.5
    quarter = np.array([[1, -1, -1, -1], [-1, -1, -1, 5]])  # -1 (no result) never counts
    assert recall_at_k(quarter, exact) == 0.25
    assert recall_at_k(np.full((2, 4), -1), exact) == 0.0


def test_recall_at_k_empty_is_zero():
    assert recall_at_k(np.empty((0, 3), np.int64), np.empty((0, 3), np.int64)) == 0.0


# ----- IVF build and nprobe tuning ----------------------------------------------------------
def test_build_index_and_tune_nprobe_on_clustered_vectors(tmp_path):
    rng = np.random.default_rng(7)
    n, d, clusters, k = 5_000, 32, 40, 10
    centres = _normalised(rng.standard_normal((clusters, d)))
    labels = rng.integers(0, clusters, n)
    vectors = _normalised(centres[labels] + 0.15 * rng.standard_normal((n, d)))
    ids = (np.arange(n, dtype=np.int64) * 7 + 1_000_003)[rng.permutation(n)]
    store = make_store(tmp_path / "store", vectors, ids, sizes=[2_000, 1_500, 1_499, 1])

    plan = _plan({"index_key": "IVF64,Flat"}, n, d)
    assert (plan.kind, plan.nlist, plan.key) == ("ivf_flat", 64, "IVF64,Flat")
    index, train_seconds = build_index(store, plan, seed=0, show_progress=False)
    assert index.ntotal == n
    assert train_seconds >= 0.0

    queries = vectors[rng.choice(n, 200, replace=False)]
    brute = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]  # row positions, as the index labels rows
    _, exact_ids = exact_search(store, queries, k)
    assert recall_at_k(exact_ids, brute) == 1.0

    nprobe, curve = tune_nprobe(index, queries, exact_ids, k, target=0.9)
    probes = [c["nprobe"] for c in curve]
    assert probes == [2**i for i in range(len(probes))]  # 1, 2, 4, ... in order
    assert probes[-1] == nprobe  # stops at the first one that reaches the target
    assert all(c["recall"] < 0.9 for c in curve[:-1])
    assert curve[-1]["recall"] >= 0.9
    assert nprobe <= 64
    # the index is left at the chosen nprobe: recall checked against brute force, not the curve
    import faiss

    assert faiss.extract_index_ivf(index).nprobe == nprobe
    _, approx = index.search(queries, k)
    assert recall_at_k(approx, brute) >= 0.9
    # every returned label is a row of the store, and maps to a real store id
    assert np.isin(store.ids_at(approx[approx >= 0]), ids).all()


def test_build_flat_index_is_exact(small_store):
    store, vectors, ids = small_store
    plan = _plan({"index_key": "Flat"}, len(ids), vectors.shape[1])
    assert plan.kind == "flat"
    index, _ = build_index(store, plan, seed=0, show_progress=False)
    _, I = index.search(vectors[:5], 5)
    np.testing.assert_array_equal(store.ids_at(I.ravel()).reshape(I.shape),
                                  ids[np.argsort(-(vectors[:5] @ vectors.T), axis=1)[:, :5]])


def test_unforced_plan_turns_memory_error_into_albat_error():
    with pytest.raises(AlbatError, match="--memory-budget"):
        _plan({"index_key": None, "memory_budget_bytes": 10, "flat_max_rows": 100}, 1_000, 384)


# ----- EmbeddingStore lookups --------------------------------------------------------------
def test_vectors_at_and_ids_at_round_trip(small_store):
    store, vectors, ids = small_store
    positions = np.array([36, 0, 7, 6, 26, 25, 31, 3, 0])  # every shard, boundaries, a repeat, unsorted
    np.testing.assert_array_equal(store.vectors_at(positions), vectors[positions])
    np.testing.assert_array_equal(store.ids_at(positions), ids[positions])
    np.testing.assert_array_equal(store.all_ids(), ids)
    assert store.row_counts() == [7, 19, 5, 6]
    assert store.shard_indices() == [0, 1, 2, 3]


def test_positions_outside_the_store_raise(small_store):
    store, _, _ = small_store
    with pytest.raises(IndexError):
        store.vectors_at(np.array([37]))
    with pytest.raises(IndexError):
        store.ids_at(np.array([-1]))


def test_id_positions_and_vectors_for_ids(small_store):
    store, vectors, ids = small_store
    wanted_positions = np.array([5, 36, 8, 20, 0, 31])
    wanted_ids = ids[wanted_positions]
    np.testing.assert_array_equal(store.id_positions(wanted_ids), wanted_positions)
    np.testing.assert_array_equal(store.vectors_for_ids(wanted_ids), vectors[wanted_positions])
    # an id -> position -> id round trip over the whole store
    np.testing.assert_array_equal(store.ids_at(store.id_positions(ids)), ids)
    assert store.id_positions(np.empty(0, np.int64)).shape == (0,)


def test_unknown_id_is_an_albat_error_naming_the_id(small_store):
    store, _, ids = small_store
    unknown = int(ids.max()) + 12345
    with pytest.raises(AlbatError) as info:
        store.vectors_for_ids(np.array([ids[0], unknown]))
    assert str(unknown) in str(info.value)
    assert str(store.root) in str(info.value)
    smaller = int(ids.min()) - 1  # below every id: searchsorted lands on position 0, must still fail
    with pytest.raises(AlbatError, match=str(smaller)):
        store.id_positions(np.array([smaller]))


def test_write_shard_records_id_range_and_refuses_mismatched_rows(tmp_path):
    store = EmbeddingStore(tmp_path / "s")
    vectors = _normalised(np.random.default_rng(0).standard_normal((3, 4)))
    record = store.write_shard(2, vectors, pa.table({ID: pa.array([50, 10, 30], pa.int64())}))
    assert (record["min_id"], record["max_id"], record["rows"]) == (10, 50, 3)
    assert store.is_done(2) and not store.is_done(0)
    with pytest.raises(ValueError):
        store.write_shard(3, vectors, pa.table({ID: pa.array([1, 2], pa.int64())}))
    assert not store.is_done(3)


def test_missing_store_info_is_an_albat_error(tmp_path):
    with pytest.raises(AlbatError, match="albat embed"):
        EmbeddingStore(tmp_path / "nothing").info


def test_tune_nprobe_with_an_unreachable_target_returns_the_best_measured(tmp_path):
    rng = np.random.default_rng(3)
    n, d, k = 2_000, 16, 5
    vectors = _normalised(rng.standard_normal((n, d)))
    ids = np.arange(n, dtype=np.int64) + 100
    store = make_store(tmp_path / "store", vectors, ids, sizes=[1_000, 1_000])
    index, _ = build_index(store, _plan({"index_key": "IVF16,Flat"}, n, d), seed=0, show_progress=False)
    queries = vectors[:50]
    _, exact_ids = exact_search(store, queries, k)
    nprobe, curve = tune_nprobe(index, queries, exact_ids, k, target=1.01)
    assert [c["nprobe"] for c in curve] == [1, 2, 4, 8, 16]  # tried every power of two up to nlist
    best = max(c["recall"] for c in curve)
    assert best == 1.0  # nprobe == nlist scans every list: exact
    assert next(c for c in curve if c["nprobe"] == nprobe)["recall"] == best


@pytest.mark.parametrize("key, nlist", [("IVF64_HNSW32,Flat", 64), ("HNSW32", None), ("OPQ4_16,IVF32,PQ4", 32)])
def test_forced_index_key_is_parsed_or_refused_clearly(key, nlist):
    try:
        plan = _plan({"index_key": key}, 3_000, 16)
    except AlbatError:
        return  # refusing an unsupported key with a clear message is fine
    if key.startswith("HNSW"):
        assert (plan.kind, plan.nlist) == ("hnsw", 0)  # a graph index: no inverted lists, no nprobe
        return
    assert nlist is not None, f"{key} has no inverted lists, yet was planned as {plan.kind}"
    assert plan.nlist == nlist


def test_forced_index_keys_that_are_supported():
    pq_plan = _plan({"index_key": "IVF256,PQ48x8"}, 10**6, 384)
    assert (pq_plan.kind, pq_plan.nlist, pq_plan.key) == ("ivf_pq", 256, "IVF256,PQ48x8")
    flat_ivf = _plan({"index_key": "IVF128,Flat"}, 10**6, 384)
    assert (flat_ivf.kind, flat_ivf.nlist) == ("ivf_flat", 128)


def test_normalize_rows_gives_unit_float32_rows():
    from albat.pipeline.encoders import normalize_rows

    raw = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]], dtype=np.float64)
    out = normalize_rows(raw)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    assert np.allclose(out[0], [0.6, 0.8]) and np.allclose(out[2], [1.0, 0.0])
    assert np.all(out[1] == 0)  # a zero vector stays zero instead of becoming NaN
