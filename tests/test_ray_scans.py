"""`--executor ray` for the corpus scans: the query stage's exact-duplicate scan and dsir's two
corpus passes give byte-identical tables to the local executor. One local Ray (2 CPUs) serves
the whole module; skipped where Ray is not installed."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import SmallWiki, albat, small_run_config

from albat.pipeline.methods.dsir import _Draw, shard_raw_counts, top_k
from albat.pipeline.query import exact_duplicates
from albat.pipeline.shard_map import map_shards
from albat.stores.embedding_store import EmbeddingStore

pytest.importorskip("ray")

RAY = {"executor": "ray", "ray_address": None, "ray_cpus": 2}


@pytest.fixture(scope="module")
def ray_session():
    from albat.pipeline.ray_executor import start_ray

    ray = start_ray(None, 2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(small_wiki: SmallWiki, tiny_encoder: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small pipeline, local executor, 32-row shards (8 of them), then dsir over the corpus."""
    tmp = tmp_path_factory.mktemp("scans")
    config = small_run_config(tmp, small_wiki, tiny_encoder)
    assert albat("run", "--config", config, "--shard-rows", "32", "--quiet") == 0
    assert albat("filter", "--config", config, "--method", "dsir", "--quiet") == 0
    return tmp


def test_map_shards_returns_every_shard_in_order_on_both_executors(ray_session, local_run: Path) -> None:
    store = EmbeddingStore(local_run / "work" / "store")
    scan = {"column": "text", "buckets": 1000, "blocked": np.array([], np.int64)}
    local, on_ray = map_shards(shard_raw_counts, store, scan), map_shards(shard_raw_counts, store, scan, RAY)
    assert [s for s, _ in local] == [s for s, _ in on_ray] == list(range(8))
    for (_, a), (_, b) in zip(local, on_ray):
        np.testing.assert_array_equal(a["counts"], b["counts"])
    assert sum(int(r["selectable"]) for _, r in on_ray) == store.info["rows"]


def test_exact_duplicate_scan_on_ray_equals_local(ray_session, local_run: Path, small_wiki: SmallWiki) -> None:
    store = EmbeddingStore(local_run / "work" / "store")
    texts = pq.read_table(small_wiki.corpus).column("text").to_pylist()
    sets = [("adaptation", texts[:3] + ["not in the corpus"]), ("exclude", texts[5:7] + texts[:1])]
    local, on_ray = exact_duplicates(sets, store), exact_duplicates(sets, store, RAY)
    assert local == on_ray
    assert len(local[0]) >= 3 and len(local[1]) >= 3  # every corpus text is found (and its duplicates)
    assert all(reason.startswith("exact duplicate of exclude") for _, reason in local[1].values())


def _copy_and_rerun(local_run: Path, name: str, *stage: str) -> Path:
    copy = local_run.parent / f"{local_run.name}-{name}"
    shutil.copytree(local_run, copy)
    config = copy / "run.toml"
    config.write_text(config.read_text().replace(str(local_run), str(copy)))
    assert albat(*stage, "--config", config, "--force", "--executor", "ray", "--ray-cpus", "2", "--quiet") == 0
    return copy / "work"


def test_query_stage_on_ray_writes_the_same_tables(ray_session, local_run: Path) -> None:
    work = _copy_and_rerun(local_run, "query", "query")
    local = local_run / "work" / "tasks/default/query"
    blocked = pq.read_table(local / "blocked.parquet").column("reason").to_pylist()
    assert any(r.startswith("exact duplicate of exclude") for r in blocked)  # the scan found the eval articles
    for name in ("blocked.parquet", "candidates.parquet", "candidate_pairs.parquet", "adaptation.parquet"):
        assert (work / "tasks/default/query" / name).read_bytes() == (local / name).read_bytes(), name


def test_dsir_corpus_passes_on_ray_select_the_same_rows(ray_session, local_run: Path) -> None:
    work = _copy_and_rerun(local_run, "dsir", "filter", "--method", "dsir")
    local = local_run / "work" / "tasks/default/filter" / "selection.parquet"
    assert (work / "tasks/default/filter" / "selection.parquet").read_bytes() == local.read_bytes()
    table = pq.read_table(local)
    assert int(np.sum(table.column("keep").to_numpy())) == 20 and table.column("method")[0].as_py() == "dsir"


def test_classifier_corpus_pool_and_exact_scan_on_ray_equal_local(ray_session, local_run: Path) -> None:
    """The two newer corpus passes: the classifier's pool=corpus scoring and the exact scan text→text
    retrieval uses, shard by shard on Ray Data, give what the local loop gives."""
    from albat.pipeline.exact_scan import ExactScan
    from albat.pipeline.methods.classifier import shard_scores

    store = EmbeddingStore(local_run / "work" / "store")
    rng = np.random.default_rng(0)
    scan = {"coef": rng.normal(size=store.dim), "intercept": 0.1, "draw": "target", "seed": 3, "budget": 5,
            "blocked": store.all_ids()[:4], "candidate_ids": store.all_ids()[10:20]}
    local, on_ray = map_shards(shard_scores, store, scan), map_shards(shard_scores, store, scan, RAY)
    assert [s for s, _ in local] == [s for s, _ in on_ray] == list(range(8))
    for (_, a), (_, b) in zip(local, on_ray):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    queries = store.vectors_at(np.array([0, 50, 100]))
    for a, b in zip(ExactScan(store, "text").search(queries, 7), ExactScan(store, "text", RAY).search(queries, 7)):
        np.testing.assert_array_equal(a, b)


def test_merging_per_shard_top_keys_draws_what_one_pass_over_every_row_draws() -> None:
    """`shard_draw` keeps only a shard's top `budget` keys; with many ties (keys rounded, no noise)
    merging those in shard order must equal `_Draw.add` over every row of every shard."""
    rng = np.random.default_rng(3)
    budget, shards = 7, [np.arange(s * 50, s * 50 + n, dtype=np.int64) for s, n in enumerate([40, 50, 13, 50])]
    candidates = np.array([3, 55, 101, 160, 199], np.int64)
    whole, merged = _Draw(budget, candidates), _Draw(budget, candidates)
    for ids in shards:
        log_w = np.round(rng.normal(size=len(ids)), 1)  # ties across and within shards
        whole.add(ids, log_w, np.zeros(len(ids)), np.array([55], np.int64))
        key = log_w.copy()
        key[ids == 55] = -np.inf
        best, cand = top_k(key, budget), np.isin(ids, candidates)
        merged.merge(ids[best], log_w[best], key[best], ids[cand], log_w[cand], key[cand])
    for name in ("ids", "log_w", "key", "cand_log_w", "cand_key"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(whole, name), err_msg=name)
    assert 55 not in whole.ids and len(whole.ids) == budget


def test_ray_scans_fetch_their_shards_from_a_url_work_directory(ray_session, local_run: Path,
                                                                small_wiki: SmallWiki) -> None:
    """With `remote_store` set (a `--work s3://...` run), each Ray task fetches the one shard it scans
    from the remote store, and the results equal the local scan's."""
    store = EmbeddingStore(local_run / "work" / "store")
    remote = local_run.parent / f"{local_run.name}-bucket"
    shutil.copytree(store.root, remote / "store")
    for extra in (remote / "store" / "ids.sorted.npy", remote / "store" / "ids.order.npy"):
        extra.unlink()  # a worker needs only store.json and its shard
    texts = pq.read_table(small_wiki.corpus).column("text").to_pylist()
    sets = [("adaptation", texts[:3]), ("exclude", texts[5:7])]
    on_remote = {**RAY, "remote_store": f"file://{remote / 'store'}"}
    assert exact_duplicates(sets, store, on_remote) == exact_duplicates(sets, store)
    scan = {"column": "text", "buckets": 1000, "blocked": np.array([], np.int64)}
    for (_, a), (_, b) in zip(map_shards(shard_raw_counts, store, scan), map_shards(shard_raw_counts, store, scan,
                                                                                   on_remote)):
        np.testing.assert_array_equal(a["counts"], b["counts"])
    (remote / "store" / "shards" / "part-00002.done.json").unlink()  # a shard without its record is refused
    with pytest.raises(Exception, match="part-00002.done.json: no completion record"):
        map_shards(shard_raw_counts, store, scan, on_remote)
