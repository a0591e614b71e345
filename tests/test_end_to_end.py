"""From a raw corpus of real Wikipedia summaries to shards read back by `datasets` and DuckDB,
with the bundled MiniLM encoder: the same path a user takes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TARGET_TOPIC, SmallWiki, albat, write_config

from albat.stores.atomic import sha256_file

BUDGET = 24


def _config(tmp: Path, wiki: SmallWiki, method: str = "knn") -> Path:
    return write_config(tmp / "run.toml", f"""
work = "work"
seed = 7

[embed]
input = ["{wiki.corpus}"]
id_column = "id"
keep_columns = ["title", "topic"]
shard_rows = 128

[index]
memory_budget = "256MB"
recall_queries = 100

[query]
adaptation = ["{wiki.adaptation}"]
exclude = ["{wiki.eval}"]
k = 16

[filter]
method = "{method}"
budget = {BUDGET}

[emit]
shard_rows = 10
backbone_weight = 0.5
""")


@pytest.fixture(scope="module")
def run_dir(small_wiki: SmallWiki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("e2e")
    assert albat("run", "--config", _config(tmp, small_wiki), "--quiet") == 0
    return tmp


def _manifest(work: Path) -> dict:
    return json.loads((work / "tasks/default/output" / "manifest.json").read_text())


def _eval_ids(wiki: SmallWiki) -> set[int]:
    return {json.loads(line)["id"] for line in wiki.eval.read_text().splitlines()}


def test_manifest_names_every_shard_with_its_checksum(run_dir: Path, small_wiki: SmallWiki) -> None:
    work = run_dir / "work"
    manifest = _manifest(work)
    on_disk = sorted(f"data/{p.name}" for p in (work / "tasks/default/output" / "data").glob("part-*.parquet"))
    assert on_disk == [s["path"] for s in manifest["shards"]]
    for shard in manifest["shards"]:
        assert sha256_file(work / "tasks/default/output" / shard["path"]) == shard["sha256"]
        assert pq.read_metadata(work / "tasks/default/output" / shard["path"]).num_rows == shard["rows"] <= 10
    assert manifest["counts"]["selected"] == BUDGET
    assert manifest["counts"]["adaptation"] == 8
    assert manifest["rows"] == BUDGET + 8
    assert manifest["seed"] == 7 and manifest["config"]["seed"] == 7
    assert manifest["encoder"]["name"] == "all-MiniLM-L6-v2" and manifest["encoder"]["dim"] == 384
    assert manifest["index"]["index_key"] == "Flat" and manifest["index"]["recall_at_k"] == pytest.approx(1.0, abs=0.02)
    assert manifest["counts"]["corpus_rows"] == small_wiki.rows


def test_shards_load_with_datasets_unchanged(run_dir: Path) -> None:
    import datasets

    work = run_dir / "work"
    files = [str(work / "tasks/default/output" / s["path"]) for s in _manifest(work)["shards"]]
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert len(ds) == BUDGET + 8
    for column in ("text", "id", "title", "topic", "albat_id", "albat_method", "albat_score", "albat_weight",
                   "albat_query", "albat_is_adaptation", "albat_source", "albat_row"):
        assert column in ds.column_names
    backbone = ds.filter(lambda r: not r["albat_is_adaptation"])
    assert backbone["albat_id"] == backbone["id"]  # the corpus's own ids join back to the user's data
    assert all(t and t.strip() for t in ds["text"])


def test_sql_views_and_weights(run_dir: Path) -> None:
    from albat.pipeline.sql import run_sql

    work = run_dir / "work"
    out = run_dir / "weights.csv"
    run_sql(work, "SELECT albat_is_adaptation, count(*) AS n, sum(albat_weight) AS w FROM shards GROUP BY 1 ORDER BY 1",
            out=str(out))
    lines = out.read_text().splitlines()[1:]
    backbone, adaptation = [line.split(",") for line in lines]
    # adaptation rows weigh 1; backbone rows lambda * n_A / m each, so they sum to lambda * n_A
    assert (backbone[0], int(backbone[1]), float(backbone[2])) == ("false", BUDGET, pytest.approx(0.5 * 8))
    assert (adaptation[0], int(adaptation[1]), float(adaptation[2])) == ("true", 8, pytest.approx(8.0))
    table = run_sql(work, "SELECT count(*) FROM selection WHERE keep")
    assert str(BUDGET) in table
    joined = run_dir / "joined.parquet"
    run_sql(work, "SELECT s.id, c.title FROM selection s JOIN corpus c ON c.albat_id = s.id WHERE s.keep", out=str(joined))
    assert pq.read_table(joined).num_rows == BUDGET


def test_no_evaluation_example_is_selected(run_dir: Path, small_wiki: SmallWiki) -> None:
    work = run_dir / "work"
    eval_ids = _eval_ids(small_wiki)
    blocked = pq.read_table(work / "tasks/default/query" / "blocked.parquet").to_pydict()
    assert eval_ids <= set(blocked["id"])  # each one is in the corpus and blocked
    reasons = dict(zip(blocked["id"], blocked["reason"]))
    assert all("exclude example" in reasons[i] for i in eval_ids)
    selection = pq.read_table(work / "tasks/default/filter" / "selection.parquet").to_pydict()
    kept = {i for i, k in zip(selection["id"], selection["keep"]) if k}
    assert not kept & eval_ids
    for shard in _manifest(work)["shards"]:
        ids = pq.read_table(work / "tasks/default/output" / shard["path"], columns=["albat_id"]).column(0).to_pylist()
        assert not set(i for i in ids if i is not None) & eval_ids


def test_knn_selects_the_target_domain(run_dir: Path, small_wiki: SmallWiki) -> None:
    """Real embeddings: neighbours of math articles are mostly math articles (base rate ~7%)."""
    work = run_dir / "work"
    rows = [r for s in _manifest(work)["shards"] for r in pq.read_table(work / "tasks/default/output" / s["path"]).to_pylist()]
    topics = [r["topic"] for r in rows if not r["albat_is_adaptation"]]
    base_rate = 28 / small_wiki.rows
    assert sum(t == TARGET_TOPIC for t in topics) / len(topics) > 4 * base_rate


def test_every_candidate_has_a_decision_and_reason(run_dir: Path) -> None:
    work = run_dir / "work"
    candidates = pq.read_table(work / "tasks/default/query" / "candidates.parquet").to_pydict()
    selection = pq.read_table(work / "tasks/default/filter" / "selection.parquet").to_pydict()
    assert sorted(selection["id"]) == sorted(candidates["candidate_id"])
    assert all(r.startswith("kept:") == k for r, k in zip(selection["reason"], selection["keep"]))
    ranks = sorted(r for r, k in zip(selection["selection_rank"], selection["keep"]) if k)
    assert ranks == list(range(BUDGET))
    pairs = pq.read_table(work / "tasks/default/query" / "candidate_pairs.parquet")
    assert pairs.num_rows == 8 * 16  # every (adaptation, candidate) pair kept
    assert len(set(candidates["candidate_id"])) == len(candidates["candidate_id"])  # the union, deduplicated


def test_rerun_is_a_no_op(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    work = run_dir / "work"
    before = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    assert albat("run", "--config", run_dir / "run.toml", "--quiet") == 0
    out = capsys.readouterr().out
    assert all(f"{s}: skipped" in out for s in ("embed", "index", "query", "filter", "emit")), out
    after = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file() and p.name != ".lock"}
    assert before == after


def test_random_baseline_through_the_same_stages(small_wiki: SmallWiki, run_dir: Path) -> None:
    """A second method reuses the store and index, and draws uniformly from the whole corpus."""
    work = run_dir / "work"
    store_mtime = (work / "store" / "store.json").stat().st_mtime_ns
    assert albat("run", "--config", run_dir / "run.toml", "--quiet", "--method", "random", "--budget", "40") == 0
    assert (work / "store" / "store.json").stat().st_mtime_ns == store_mtime
    manifest = _manifest(work)
    assert manifest["method"] == "random" and manifest["counts"]["selected"] == 40
    selection = pq.read_table(work / "tasks/default/filter" / "selection.parquet").to_pydict()
    kept = [i for i, k in zip(selection["id"], selection["keep"]) if k]
    assert len(set(kept)) == 40 and not set(kept) & _eval_ids(small_wiki)
    candidates = set(pq.read_table(work / "tasks/default/query" / "candidates.parquet").column("candidate_id").to_pylist())
    assert len(set(kept) - candidates) > 10  # drawn from the whole corpus, not the candidate pool
    # same seed, same draw
    first = kept
    assert albat("filter", "--config", run_dir / "run.toml", "--quiet", "--method", "random", "--budget", "40",
                 "--seed", "8") == 0
    second = [i for i, k in zip(*pq.read_table(work / "tasks/default/filter" / "selection.parquet", columns=["id", "keep"]).to_pydict().values()) if k]
    assert second != first
    assert albat("filter", "--config", run_dir / "run.toml", "--quiet", "--method", "random", "--budget", "40") == 0
    third = [i for i, k in zip(*pq.read_table(work / "tasks/default/filter" / "selection.parquet", columns=["id", "keep"]).to_pydict().values()) if k]
    assert third == first


def test_query_refuses_another_encoder(run_dir: Path, tiny_encoder: str, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    rc = albat("query", "--config", run_dir / "run.toml", "--quiet", "--query-encoder", tiny_encoder, "--k", "5")
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "embedded with 'all-MiniLM-L6-v2'" in err and "drop --query-encoder" in err


def test_index_recall_is_recorded(run_dir: Path) -> None:
    infos = json.loads((run_dir / "work" / "index" / "index_infos.json").read_text())
    for key in ("index_key", "recall_at_k", "build_seconds", "index_bytes", "estimated_bytes", "memory_budget_bytes",
                "nprobe", "recall_k", "rows", "dim", "peak_rss_bytes"):
        assert key in infos
    assert infos["rows"] > 0 and infos["index_bytes"] > infos["rows"] * 384 * 4
    assert np.isclose(infos["recall_at_k"], 1.0, atol=0.02)
    assert os.path.exists(run_dir / "work" / "index" / "knn.index")


def test_compressed_index_is_reranked_exactly(run_dir: Path, tmp_path: Path) -> None:
    """With a forced IVF-PQ index, candidates are re-ranked with the stored vectors: similarities are
    exact cosines and the candidate set stays close to the exact (Flat) one."""
    import shutil

    from albat.stores.embedding_store import EmbeddingStore

    work = tmp_path / "work"
    shutil.copytree(run_dir / "work", work)
    flat = set(pq.read_table(work / "tasks/default/query" / "candidates.parquet").column("candidate_id").to_pylist())
    args = ("--config", run_dir / "run.toml", "--work", work, "--quiet")
    assert albat("index", *args, "--index-key", "IVF4,PQ16x4") == 0
    infos = json.loads((work / "index" / "index_infos.json").read_text())
    assert infos["index_key"] == "IVF4,PQ16x4" and infos["kind"] == "ivf_pq"
    overlap = {}
    for factor in (1, 4):
        assert albat("query", *args, "--rerank-factor", str(factor)) == 0
        pairs = pq.read_table(work / "tasks/default/query" / "candidate_pairs.parquet").to_pydict()
        overlap[factor] = len(set(pairs["candidate_id"]) & flat) / len(flat)
    adaptation = np.load(work / "tasks/default/query" / "adaptation.npy")
    vectors = EmbeddingStore(work / "store").vectors_for_ids(np.array(pairs["candidate_id"]))
    expected = np.einsum("ij,ij->i", adaptation[pairs["query_idx"]], vectors)
    assert np.allclose(pairs["similarity"], expected, atol=1e-5)
    assert len(pairs["candidate_id"]) == 8 * 16 and max(pairs["rank"]) == 15
    assert overlap[4] > overlap[1] and overlap[4] >= 0.8, overlap


def test_forced_index_that_cannot_train_is_a_clear_error(run_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    import shutil

    work = tmp_path / "work"
    shutil.copytree(run_dir / "work", work)
    capsys.readouterr()
    assert albat("index", "--config", run_dir / "run.toml", "--work", work, "--quiet", "--index-key", "IVF4096,Flat") == 2
    err = capsys.readouterr().err
    assert "FAISS cannot train IVF4096,Flat" in err and "--index-key" in err


def test_id_lookup_reads_a_memory_mapped_index(run_dir: Path) -> None:
    from albat.stores.embedding_store import EmbeddingStore

    store = EmbeddingStore(run_dir / "work" / "store")
    sorted_ids, order = store._id_index()
    assert isinstance(sorted_ids, np.memmap) and isinstance(order, np.memmap)
    ids = store.all_ids()
    assert np.array_equal(sorted_ids, np.sort(ids)) and np.array_equal(ids[order], sorted_ids)
    wanted = ids[[5, 0, len(ids) - 1]]
    assert np.array_equal(store.id_positions(wanted), [5, 0, len(ids) - 1])


def test_backbone_weights_formula() -> None:
    from albat.pipeline.emit import backbone_weights

    assert np.allclose(backbone_weights(np.array([1.0, 1.0, 2.0]), n_adaptation=8, lam=0.5), [4 / 3, 4 / 3, 8 / 3])
    assert backbone_weights(np.zeros(0), n_adaptation=8, lam=1.0).shape == (0,)


def test_emit_without_adaptation_rows_keeps_the_weights(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    from albat.pipeline.sql import run_sql

    work = tmp_path / "work"
    shutil.copytree(run_dir / "work", work)
    assert albat("emit", "--config", run_dir / "run.toml", "--work", work, "--quiet", "--no-adaptation") == 0
    out = tmp_path / "w.csv"
    run_sql(work, "SELECT count(*) AS n, sum(albat_weight) AS w, bool_or(albat_is_adaptation) AS a FROM shards",
            out=str(out))
    n, w, a = out.read_text().splitlines()[1].split(",")
    manifest = _manifest(work)
    assert int(n) == manifest["counts"]["selected"] and a == "false"
    assert float(w) == pytest.approx(0.5 * 8)  # still lambda * n_A: n_A is the adaptation set's size
