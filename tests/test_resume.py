"""Kill a stage with SIGKILL mid-way (deterministic crash points), rerun, and get exactly what an
uninterrupted run gives: no row lost, none duplicated, no half-written file visible."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SmallWiki, small_run_config

from albat.stores.embedding_store import EmbeddingStore


def _albat(*args: object, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("ALBAT_KILL_AT", None)
    if kill_at:
        env["ALBAT_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "albat.pipeline.cli", *map(str, args), "--quiet"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(small_wiki: SmallWiki, tiny_encoder: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run to compare against."""
    tmp = tmp_path_factory.mktemp("reference")
    result = _albat("run", "--config", small_run_config(tmp, small_wiki, tiny_encoder))
    assert result.returncode == 0, result.stderr
    return tmp / "work"


def _store_contents(work: Path) -> tuple[np.ndarray, list[dict], list[dict]]:
    store = EmbeddingStore(work / "store")
    vectors = np.concatenate([store.vectors(i) for i in store.shard_indices()])
    meta = [r for i in store.shard_indices() for r in store.metadata(i).to_pylist()]
    records = store.done_records()
    return vectors, meta, records


@pytest.mark.parametrize("kill_at", ["embed.shard:2", "store.before_done:3", "embed.before_shard_write:1"])
def test_embed_resumes_after_sigkill(kill_at: str, small_wiki: SmallWiki, tiny_encoder: str, reference: Path,
                                     tmp_path: Path) -> None:
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    killed = _albat("embed", "--config", config, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL
    store = EmbeddingStore(tmp_path / "work" / "store")
    done_before = store.shard_indices()
    assert len(done_before) < 5 and (not store.exists() or not store.info["complete"])
    resumed = _albat("embed", "--config", config)
    assert resumed.returncode == 0, resumed.stderr
    assert f"encoded_rows={small_wiki.rows - 64 * len(done_before)}" in resumed.stdout  # finished shards skipped
    vectors, meta, records = _store_contents(tmp_path / "work")
    ref_vectors, ref_meta, ref_records = _store_contents(reference)
    assert np.array_equal(vectors, ref_vectors)
    assert meta == ref_meta
    ids = [r["albat_id"] for r in meta]
    assert len(ids) == len(set(ids)) == small_wiki.rows  # nothing lost, nothing duplicated
    assert records == ref_records  # byte-identical shards (checksums)
    assert not list((tmp_path / "work" / "store").rglob(".*tmp-*"))


@pytest.mark.parametrize("kill_at", ["emit.shard:3", "output.before_swap:1"])
def test_emit_killed_mid_way_publishes_nothing_partial(kill_at: str, small_wiki: SmallWiki, tiny_encoder: str,
                                                       reference: Path, tmp_path: Path) -> None:
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    killed = _albat("run", "--config", config, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL
    output = tmp_path / "work" / "tasks/default/output"
    assert not output.exists()  # a reader sees no shard set rather than part of one
    resumed = _albat("run", "--config", config)
    assert resumed.returncode == 0, resumed.stderr
    for stage in ("embed", "index", "query", "filter"):
        assert f"{stage}: skipped" in resumed.stdout
    manifest = json.loads((output / "manifest.json").read_text())
    ref = json.loads((reference / "tasks/default/output" / "manifest.json").read_text())
    assert [(s["path"], s["rows"], s["sha256"]) for s in manifest["shards"]] == \
           [(s["path"], s["rows"], s["sha256"]) for s in ref["shards"]]
    assert sorted(p.name for p in output.iterdir()) == ["README.md", "_SUCCESS", "data", "manifest.json"]
    assert sorted(f"data/{p.name}" for p in (output / "data").iterdir()) == sorted(s["path"] for s in ref["shards"])
    assert not list(output.parent.glob(".output.staging-*"))


def test_rerun_after_a_config_change_replaces_the_set_whole(small_wiki: SmallWiki, tiny_encoder: str,
                                                            tmp_path: Path) -> None:
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    assert _albat("run", "--config", config).returncode == 0
    result = _albat("run", "--config", config, "--budget", "7")
    assert result.returncode == 0, result.stderr
    output = tmp_path / "work" / "tasks/default/output"
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["counts"]["selected"] == 7
    names = sorted(f"data/{p.name}" for p in output.glob("data/part-*.parquet"))
    assert names == [s["path"] for s in manifest["shards"]]  # no stale shard from the larger set
    assert sum(pq.read_metadata(output / n).num_rows for n in names) == 7 + 8


def test_a_second_writer_is_refused(small_wiki: SmallWiki, tiny_encoder: str, tmp_path: Path) -> None:
    from albat.stores.workdir import Workdir

    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    holder = Workdir(tmp_path / "work")
    holder.lock()
    try:
        result = _albat("embed", "--config", config)
    finally:
        holder.unlock()
    assert result.returncode == 2
    assert "in use by pid" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_query_killed_before_publishing_keeps_the_previous_tables(small_wiki: SmallWiki, tiny_encoder: str,
                                                                   tmp_path: Path) -> None:
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    assert _albat("run", "--config", config).returncode == 0
    query_dir = tmp_path / "work" / "tasks/default/query"
    before = {p.name: p.read_bytes() for p in query_dir.iterdir()}
    killed = _albat("query", "--config", config, "--k", "4", kill_at="query.before_swap:1")
    assert killed.returncode == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in query_dir.iterdir()} == before  # old set intact, no mix
    resumed = _albat("query", "--config", config, "--k", "4")
    assert resumed.returncode == 0, resumed.stderr
    assert pq.read_table(query_dir / "candidate_pairs.parquet").num_rows == 8 * 4
    assert not list(query_dir.parent.glob(".query.*"))
