"""`albat verify WORK`: a finished run verifies clean (exit 0); each kind of drift (a file changed,
missing or extra, an index or table from another store, an output emitted from an earlier run) is
reported on a line naming the file and the fix (exit 1); a run killed part-way is incomplete, not
drift (exit 0); a directory being written is not verified (exit 2)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SmallWiki, albat, small_run_config

from albat.stores.workdir import Workdir


@pytest.fixture(scope="module")
def finished(small_wiki: SmallWiki, tiny_encoder: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("verify")
    config = small_run_config(root, small_wiki, tiny_encoder)
    assert albat("run", "--config", config, "--quiet") == 0
    other = root / "other"  # a second, smaller store with its index, for "from another store" cases
    rows = pq.read_table(small_wiki.corpus).slice(0, 40)
    pq.write_table(rows, root / "small.parquet")
    assert albat("embed", "--work", other, "--input", root / "small.parquet", "--encoder", tiny_encoder, "--quiet") == 0
    assert albat("index", "--work", other, "--quiet") == 0
    return root / "work", config


def _verify(capsys: pytest.CaptureFixture, work: Path) -> tuple[int, str]:
    capsys.readouterr()
    rc = albat("verify", work)
    return rc, capsys.readouterr().out


def _flip_byte(path: Path, offset: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _rewrite(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(change(pq.read_table(path)), path)


def _write_index(work: Path, vectors: np.ndarray, ids: np.ndarray) -> None:
    import faiss

    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(vectors, ids)
    faiss.write_index(index, str(work / "index" / "knn.index"))


def _store_ids(work: Path) -> np.ndarray:
    return np.load(work / "store" / "ids.sorted.npy")


def _shift_ids(table: pa.Table, column: str) -> pa.Table:
    i = table.column_names.index(column)
    return table.set_column(i, column, pa.compute.add(table.column(column), 10**9))


def _keep_a_blocked_id(work: Path) -> None:
    blocked = pq.read_table(work / "tasks/default/query" / "blocked.parquet").column("id").to_pylist()
    selection = pq.read_table(work / "tasks/default/filter" / "selection.parquet").to_pydict()
    first_kept = selection["keep"].index(True)
    selection["id"][first_kept] = next(b for b in blocked if b not in selection["id"])
    pq.write_table(pa.table(selection), work / "tasks/default/filter" / "selection.parquet")


# name -> (tamper(work, other), file the DRIFT line names, words of the message and fix)
DRIFT: dict[str, tuple[Callable[[Path, Path], object], str, str]] = {
    "store shard bytes changed": (lambda w, o: _flip_byte(w / "store/shards/part-00001.emb.npy"),
                                  "part-00001.emb.npy", "SHA-256 differs"),
    "store metadata replaced": (lambda w, o: shutil.copy(w / "store/shards/part-00000.meta.parquet",
                                                         w / "store/shards/part-00001.meta.parquet"),
                                "part-00001.meta.parquet", "SHA-256 differs"),
    "store shard deleted": (lambda w, o: [p.unlink() for p in (w / "store/shards").glob("part-00002.*")],
                            "part-00002.done.json", "missing; rerun `albat embed --force`"),
    "store shard without its record": (lambda w, o: (w / "store/shards/part-00003.done.json").unlink(),
                                       "part-00003", "belongs to no completed shard"),
    "id lookup changed": (lambda w, o: np.save(w / "store/ids.sorted.npy", _store_ids(w)[::-1].copy()),
                          "ids.sorted.npy", "do not match the shards"),
    "index from another store": (lambda w, o: (shutil.rmtree(w / "index"), shutil.copytree(o / "index", w / "index")),
                                 "index", "built from another store"),
    "index file truncated": (lambda w, o: (w / "index/knn.index").write_bytes((w / "index/knn.index").read_bytes()[:500]),
                             "knn.index", "unreadable FAISS index"),
    "index holds other ids": (lambda w, o: _write_index(w, np.eye(len(_store_ids(w)), 32, dtype=np.float32),
                                                        _store_ids(w) + 1), "knn.index", "ids differ from the store"),
    "index of another dimension": (lambda w, o: _write_index(w, np.eye(len(_store_ids(w)), 16, dtype=np.float32),
                                                             _store_ids(w)), "knn.index", "dimension 16"),
    "query vectors from another encoder": (lambda w, o: np.save(w / "tasks/default/query/adaptation.npy", np.zeros((8, 48), np.float32)),
                                           "adaptation.npy", "not the store's encoder"),
    "candidates from another store": (lambda w, o: _rewrite(w / "tasks/default/query/candidates.parquet",
                                                            lambda t: _shift_ids(t, "candidate_id")),
                                      "candidates.parquet", "is not in the store"),
    "selection keeps a blocked id": (lambda w, o: _keep_a_blocked_id(w), "selection.parquet", "blocked (a leak)"),
    "selection deleted": (lambda w, o: (w / "tasks/default/filter/selection.parquet").unlink(), "selection.parquet",
                          "records the stage as done; rerun `albat filter`"),
    "output shard changed": (lambda w, o: _rewrite(w / "tasks/default/output/data/part-00002.parquet", lambda t: t.slice(1)),
                             "part-00002.parquet", "SHA-256 differs"),
    "output shard missing": (lambda w, o: (w / "tasks/default/output/data/part-00001.parquet").unlink(), "part-00001.parquet", "missing"),
    "output extra shard": (lambda w, o: shutil.copy(w / "tasks/default/output/data/part-00000.parquet", w / "tasks/default/output/data/part-00099.parquet"),
                           "part-00099.parquet", "not in the manifest"),
    "output emitted from an earlier filter": (lambda w, o: albat("filter", "--work", w, "--budget", 7, "--quiet"),
                                              "output", "stale: emitted from an earlier `albat filter` run"),
    "selection made from an earlier query": (lambda w, o: albat("query", "--config", o.parent / "run.toml", "--work", w,
                                                                "--k", 5, "--quiet"),
                                             "selection.parquet", "stale: selected from an earlier `albat query` run"),
}


def _copy(finished: tuple[Path, Path], tmp_path: Path) -> Path:
    shutil.copytree(finished[0], tmp_path / "work")
    return tmp_path / "work"


def test_a_finished_run_verifies_clean(finished: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out = _verify(capsys, _copy(finished, tmp_path))
    assert rc == 0, out
    assert [line.split()[0] for line in out.splitlines()] == ["OK"] * 5 + ["verify:"]
    assert "no drift" in out


@pytest.mark.parametrize("name", DRIFT)
def test_drift_is_reported_with_the_file_and_the_fix(name: str, finished: tuple[Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    work = _copy(finished, tmp_path)
    tamper, path, words = DRIFT[name]
    tamper(work, finished[0].parent / "other")
    rc, out = _verify(capsys, work)
    assert rc == 1, out
    drift = [line for line in out.splitlines() if line.startswith("DRIFT")]
    assert any(path in line.split(": ")[0] and words in line and ("rerun" in line or "delete" in line)
               for line in drift), out


def test_verify_refuses_a_directory_being_written(finished: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    work = _copy(finished, tmp_path)
    writer = Workdir(work)
    writer.lock()
    try:
        capsys.readouterr()
        assert albat("verify", work) == 2
        assert "being written by pid" in capsys.readouterr().err
    finally:
        writer.unlock()


def test_a_killed_run_is_incomplete_not_drift(small_wiki: SmallWiki, tiny_encoder: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    env = {**os.environ, "ALBAT_KILL_AT": "write:part-00002.meta.parquet:2"}
    killed = subprocess.run([sys.executable, "-m", "albat.pipeline.cli", "embed", "--config", config, "--quiet"], cwd=REPO,
                            env=env, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    rc, out = _verify(capsys, tmp_path / "work")
    assert rc == 0, out
    assert "incomplete (2 shards done)" in out and "no drift" in out
    assert json.loads((tmp_path / "work" / "store" / "store.json").read_text())["complete"] is False
