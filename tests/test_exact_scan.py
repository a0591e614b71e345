"""The exact shard-by-shard search (`pipeline.exact_scan`) and the store read from its pair side
(`PairSideView`): what text→text retrieval over an image store's captions stands on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from albat.pipeline.exact_scan import ExactScan, merge_top_k, top_k_rows
from albat.stores.embedding_store import EmbeddingStore, PairSideView, store_side
from albat.stores.errors import AlbatError
from method_fixtures import make_store


def _unit(rng: np.random.Generator, rows: int, dim: int = 8) -> np.ndarray:
    x = rng.normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_top_k_rows_by_hand() -> None:
    sims = np.array([[0.1, 0.9, 0.5, 0.9], [0.3, 0.2, 0.1, 0.0]], np.float32)
    values, cols = top_k_rows(sims, 2)
    assert cols.tolist() == [[1, 3], [0, 1]]  # the tie 0.9/0.9 goes to the lower column
    assert np.allclose(values, [[0.9, 0.9], [0.3, 0.2]])
    assert top_k_rows(sims, 10)[1].shape == (2, 4)


def test_merge_top_k_pads_a_small_store() -> None:
    parts = [(np.array([[0.5, 0.2]], np.float32), np.array([[0, 1]])),
             (np.array([[0.7]], np.float32), np.array([[2]]))]
    sims, positions = merge_top_k(parts, 1, 4)
    assert positions.tolist() == [[2, 0, 1, -1]] and sims[0, :3].tolist() == pytest.approx([0.7, 0.5, 0.2])
    assert sims[0, 3] == -np.inf
    assert merge_top_k([], 2, 3)[1].tolist() == [[-1] * 3] * 2


@pytest.mark.parametrize("side", ["text", "pair"])
def test_exact_scan_matches_brute_force_and_faiss(tmp_path: Path, side: str) -> None:
    import faiss

    rng = np.random.default_rng(3)
    vectors, pair = _unit(rng, 23), _unit(rng, 23)
    store = make_store(tmp_path / "s", list(range(100, 123)), [f"t{i}" for i in range(23)], vectors, 5, pair)
    queries = _unit(rng, 4)
    sims, positions = ExactScan(store, side).search(queries, 6)
    target = pair if side == "pair" else vectors
    brute = np.argsort(-(queries @ target.T), axis=1, kind="stable")[:, :6]
    assert positions.tolist() == brute.tolist()
    flat = faiss.IndexFlatIP(8)
    flat.add(target)
    faiss_sims, faiss_positions = flat.search(queries, 6)
    assert np.array_equal(positions, faiss_positions) and np.allclose(sims, faiss_sims, atol=1e-5)
    assert ExactScan(store, side).ntotal == 23


def test_pair_side_view_reads_the_pair_vectors(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    vectors, pair = _unit(rng, 7), _unit(rng, 7)
    store = make_store(tmp_path / "s", list(range(7)), [f"t{i}" for i in range(7)], vectors, 3, pair)
    view = store_side(store.root, "pair")
    assert isinstance(view, PairSideView) and type(store_side(store.root, "text")) is EmbeddingStore
    assert np.array_equal(view.vectors_for_ids(np.array([6, 0])), pair[[6, 0]])
    assert np.array_equal(view.vectors_at(np.arange(7)), pair)
    assert view.info["pair_column"] is None and view.pair_column is None and view.info["side"] == "pair"
    assert np.array_equal(view.ids_at(np.arange(7)), store.ids_at(np.arange(7)))
    with pytest.raises(AlbatError, match="no other side"):
        view.vectors(0, "pair")
    plain = make_store(tmp_path / "plain", list(range(3)), ["a", "b", "c"], vectors[:3], 3)
    with pytest.raises(AlbatError, match="no pair column to read"):
        store_side(plain.root, "pair").vectors_for_ids(np.array([0]))


def test_prefetch_answers_later_searches_in_one_pass(tmp_path: Path) -> None:
    """After prefetch(queries, K), searches of those queries with k <= K are sliced from the one pass
    and equal fresh scans (padding included where the store has fewer than k rows); a query not
    prefetched, or a larger k, scans again."""
    rng = np.random.default_rng(5)
    vectors = _unit(rng, 9)
    store = make_store(tmp_path / "s", list(range(9)), [f"t{i}" for i in range(9)], vectors, 4)
    queries = _unit(rng, 3)
    fresh = ExactScan(store, "text")
    scan = ExactScan(store, "text")
    scan.prefetch(np.concatenate([queries, queries[:1]]), 5)
    assert scan.scans == 1
    for chosen, k in ((queries, 5), (queries[1:], 2), (queries[:1], 1)):
        got, want = scan.search(chosen, k), fresh.search(chosen, k)
        assert np.array_equal(got[1], want[1]) and np.allclose(got[0], want[0])
    assert scan.scans == 1
    small = ExactScan(store, "text")
    small.prefetch(queries, 12)  # more than the 9 rows: padded
    got, want = small.search(queries, 11), fresh.search(queries, 11)
    assert np.array_equal(got[1], want[1]) and got[1][0, -1] == -1 and np.isneginf(got[0][0, -1])
    assert small.scans == 1
    scan.search(queries, 6)  # wider than prefetched
    scan.search(_unit(rng, 1), 2)  # never prefetched
    assert scan.scans == 3
