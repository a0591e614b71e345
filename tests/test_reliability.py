"""The guarantees beside crash safety: one writer per work directory with a lock that a crash never
leaves behind, atomic publication without the atomic exchange too, the emit.output sandbox, and
untrusted files: nothing is unpickled, SQL runs sandboxed in the work directory."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SmallWiki, albat, small_run_config

from albat.stores import atomic
from albat.stores.errors import AlbatError
from albat.stores.workdir import Workdir

HOLD = "import sys, time; from albat.stores.workdir import Workdir; Workdir(sys.argv[1]).lock(); print('held', flush=True); time.sleep(600)"


def test_a_killed_writer_never_blocks_the_next_one(tmp_path: Path) -> None:
    work = tmp_path / "work"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(work)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(AlbatError, match=rf"in use by pid {holder.pid}; wait for it to finish"):
            Workdir(work).lock()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    second = Workdir(work)
    second.lock()  # at once: the kernel dropped the dead process's lock
    second.unlock()
    assert list(work.iterdir()) == []  # the lock is on the directory itself: no lock file, nothing to clean up


def test_a_directory_the_lock_created_goes_when_nothing_was_written(tmp_path: Path) -> None:
    work = tmp_path / "a" / "b"
    first = Workdir(work)
    first.lock()
    assert work.is_dir()
    first.unlock()
    assert not (tmp_path / "a").exists()  # both directories it created, removed empty


def test_the_lock_follows_a_directory_replaced_while_locking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that opened a directory another run then removed must not lock the deleted inode
    (a third run would lock the new directory and write beside it)."""
    from albat.stores import workdir

    work = tmp_path / "work"
    opened = []
    real_open = workdir._open_lockable

    def open_then_replace(root: Path) -> int:
        fd = real_open(root)
        if not opened:
            root.rmdir()
            root.mkdir()  # someone replaced it between our open and our flock
        opened.append(os.fstat(fd).st_ino)
        return fd

    monkeypatch.setattr(workdir, "_open_lockable", open_then_replace)
    writer = Workdir(work)
    writer.lock()
    try:
        assert len(opened) == 2 and opened[1] == os.stat(work).st_ino  # retried, holds the live directory
        monkeypatch.setattr(workdir, "_open_lockable", real_open)
        with pytest.raises(AlbatError, match="in use by pid"):
            Workdir(work).lock()
    finally:
        writer.unlock()


def test_publication_without_the_atomic_exchange(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)  # a file system without RENAME_EXCHANGE
    final = tmp_path / "output"
    for version in ("one", "two"):
        with atomic.staged_directory(final) as staging:
            (staging / "part-00000.parquet").write_text(version)
        assert (final / "part-00000.parquet").read_text() == version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output"]


def test_emit_output_inside_the_work_directory(small_wiki: SmallWiki, tiny_encoder: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    assert albat("run", "--config", config, "--output", "sets/knn-20", "--quiet") == 0
    work = tmp_path / "work"
    task = work / "tasks" / "default"
    assert (task / "sets" / "knn-20" / "manifest.json").exists() and not (task / "output").exists()
    capsys.readouterr()
    assert albat("verify", work) == 0  # verify and sql find the set where the last emit put it
    assert "sets/knn-20: 6 shards, 28 rows" in capsys.readouterr().out
    assert albat("sql", work, "SELECT count(*) AS n FROM shards") == 0
    assert "28" in capsys.readouterr().out


# ----- untrusted files --------------------------------------------------------------------------------
SOURCES = sorted([*REPO.glob("pipeline/**/*.py"), *REPO.glob("stores/*.py"), *REPO.glob("benchmarks/*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_is_unpickled(path: Path) -> None:
    text = path.read_text()
    assert not re.search(r"\bimport (c?pickle|dill|joblib|shelve)\b|\bread_pickle\b|torch\.load\(", text)
    for call in re.findall(r"np\.load\([^)]*\)", text):
        assert "allow_pickle=False" in call, call
    assert "allow_pickle=True" not in text


@pytest.mark.parametrize("sql, message", [
    ("ATTACH 'evil.duckdb' AS evil", "only read-only queries"),
    ("SET enable_external_access = true", "only read-only queries"),
    ("SELECT * FROM read_csv('/etc/passwd')", "Permission Error"),
    ("SELECT * FROM query('SET lock_configuration = false')", "query failed"),
])
def test_sql_is_sandboxed_in_the_work_directory(sql: str, message: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "w").mkdir()
    capsys.readouterr()
    assert albat("sql", tmp_path / "w", sql) == 2
    assert message in capsys.readouterr().err
    assert os.listdir(tmp_path / "w") == [] and not (REPO / "evil.duckdb").exists()
