"""The index at corpus scale: IVF lists built shard by shard and merged on disk with FAISS's own
recipe (`--on-disk`), and HNSW (`--index-type hnsw`); both checked against the in-memory IVF and
brute force on a small clustered store, and through the index and query stages."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from conftest import SmallWiki, albat, small_run_config
from test_index_unit import _normalised, make_store

from albat.pipeline.index import _plan, build_index, exact_search, recall_at_k, tune_ef_search
from albat.stores.index_store import INDEX_FILE, IVFDATA_FILE, fresh_staging, read_index, write_index


@pytest.fixture
def clustered(tmp_path):
    rng = np.random.default_rng(11)
    n, d = 4_000, 32
    centres = _normalised(rng.standard_normal((30, d)))
    vectors = _normalised(centres[rng.integers(0, 30, n)] + 0.2 * rng.standard_normal((n, d)))
    ids = np.arange(n, dtype=np.int64)[rng.permutation(n)] + 10**12
    return make_store(tmp_path / "store", vectors, ids, sizes=[1_500, 1_500, 999, 1]), vectors


def test_on_disk_lists_answer_exactly_as_the_in_memory_index(clustered, tmp_path):
    store, vectors = clustered
    plan = _plan({"index_key": "IVF32,Flat"}, len(vectors), vectors.shape[1])
    in_memory, _ = build_index(store, plan, seed=0, show_progress=False)
    directory = tmp_path / "index"
    staging = fresh_staging(directory)
    on_disk, _ = build_index(store, replace(plan, on_disk=True), seed=0, show_progress=False, staging=staging)
    assert sorted(p.name for p in staging.iterdir()) == [IVFDATA_FILE]  # the per-shard parts are merged and gone
    write_index(on_disk, directory, {"index_key": plan.key, "kind": plan.kind, "rows": len(vectors), "dim": 32,
                                     "on_disk": True, "nprobe": 8}, staging)
    assert not staging.exists() and (directory / IVFDATA_FILE).stat().st_size >= len(vectors) * (4 * 32 + 8)
    moved = tmp_path / "elsewhere"
    shutil.move(directory, moved)  # the lists are found beside the index file, wherever it is
    loaded, infos = read_index(moved)
    assert loaded.ntotal == len(vectors) and infos["ivfdata_sha256"]
    import faiss

    faiss.extract_index_ivf(in_memory).nprobe = 8
    queries = vectors[::97]
    D1, I1 = in_memory.search(queries, 10)
    D2, I2 = loaded.search(queries, 10)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_array_equal(D1, D2)
    assert recall_at_k(I2, exact_search(store, queries, 10)[1]) > 0.8


def test_hnsw_labels_are_row_positions_and_ef_search_is_tuned(clustered):
    store, vectors = clustered
    plan = _plan({"index_type": "hnsw", "memory_budget_bytes": 10**9, "flat_max_rows": 10**6}, len(vectors), 32)
    assert plan.key == "HNSW32,Flat"
    index, train_seconds = build_index(store, plan, seed=0, show_progress=False)
    assert train_seconds == 0.0 and index.ntotal == len(vectors)
    queries = vectors[::50]
    _, exact = exact_search(store, queries, 10)
    ef, curve = tune_ef_search(index, queries, exact, 10, target=0.95)
    assert [c["ef_search"] for c in curve] == [16 * 2**i for i in range(len(curve))] and ef == curve[-1]["ef_search"]
    assert curve[-1]["recall"] >= 0.95 and index.hnsw.efSearch == ef
    _, found = index.search(queries, 10)
    assert recall_at_k(found, exact) >= 0.95


@pytest.mark.parametrize("flags, kind", [(["--on-disk", "--index-type", "ivf"], "ivf_flat"),
                                         (["--index-type", "hnsw"], "hnsw")])
def test_index_and_query_stages_with_on_disk_and_hnsw_indexes(small_wiki: SmallWiki, tiny_encoder: str, tmp_path,
                                                              flags, kind):
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    assert albat("run", "--config", config, *flags, "--quiet") == 0
    index_dir = tmp_path / "work" / "index"
    infos = json.loads((index_dir / "index_infos.json").read_text())
    assert infos["kind"] == kind and infos["recall_at_k"] >= 0.9
    assert (index_dir / IVFDATA_FILE).exists() == (kind == "ivf_flat") and infos["on_disk"] == (kind == "ivf_flat")
    assert (index_dir / INDEX_FILE).exists() and not list(index_dir.glob(".build-*"))
    assert (tmp_path / "work" / "tasks/default/output" / "manifest.json").exists()
    assert albat("index", "--config", config, *flags, "--quiet") == 0  # complete: skipped, outputs unchanged
    assert albat("verify", tmp_path / "work", "--quiet") == 0  # verify reads both kinds
    if kind == "ivf_flat":  # a damaged list file is refused by the query stage with the fix
        with open(index_dir / IVFDATA_FILE, "r+b") as fh:
            fh.seek(100)
            fh.write(b"\x00" * 8 if fh.read(8) != b"\x00" * 8 else b"\x01" * 8)
        assert albat("query", "--config", config, "--force", "--quiet") != 0
