"""`--executor ray`: the same store, byte for byte, as the local executor; a Ray run SIGKILLed
mid-way resumes under the local executor to that same store. Ray runs in a subprocess (a local Ray
with 2 CPUs, shut down when it exits); skipped where Ray is not installed (`pip install '.[ray]'`)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SmallWiki, albat, small_run_config

pytest.importorskip("ray")

RAY = ["--executor", "ray", "--ray-cpus", "2", "--ray-actors", "2"]


# on top of the shared small run: 16-row shards (16 of them) and the pair column embedded too
SHAPE = ["--shard-rows", "16", "--pair-column", "title"]


def _embed(config: Path, *flags: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ALBAT_KILL_AT"} | {"HF_HUB_OFFLINE": "1"}
    if kill_at:
        env["ALBAT_KILL_AT"] = kill_at
    process = subprocess.Popen([sys.executable, "-m", "albat.pipeline.cli", "embed", "--config", str(config), *SHAPE, *flags,
                                "--quiet"],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=240)
    finally:
        try:  # a killed driver's local Ray (raylet, workers) shares its session: end it too
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _files(work: Path) -> dict[str, bytes]:
    store = work / "store"
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != "store.json"}


def _info(work: Path) -> dict:
    return json.loads((work / "store" / "store.json").read_text())


@pytest.fixture(scope="module")
def local_store(small_wiki: SmallWiki, tiny_encoder: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("local")
    assert albat("embed", "--config", small_run_config(tmp, small_wiki, tiny_encoder), *SHAPE, "--quiet") == 0
    return tmp / "work"


def test_ray_and_local_executors_write_byte_identical_stores(small_wiki: SmallWiki, tiny_encoder: str,
                                                             local_store: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    result = _embed(small_run_config(tmp_path, small_wiki, tiny_encoder), *RAY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"rows={small_wiki.rows}" in result.stdout and f"encoded_rows={small_wiki.rows}" in result.stdout
    ray_files, local_files = _files(tmp_path / "work"), _files(local_store)
    assert len([f for f in local_files if f.endswith(".done.json")]) == 16
    assert any(f.endswith(".pair.npy") for f in local_files)
    assert ray_files.keys() == local_files.keys()
    assert all(ray_files[f] == local_files[f] for f in local_files)  # vectors, metadata, checksums, id lookup
    assert _info(tmp_path / "work") == _info(local_store)
    assert time.perf_counter() - started < 120


def test_a_killed_ray_run_resumes_locally_to_the_same_store(small_wiki: SmallWiki, tiny_encoder: str,
                                                            local_store: Path, tmp_path: Path) -> None:
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    killed = _embed(config, *RAY, kill_at="embed.ray_shard:3")  # the driver dies after 3 shards came back
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    store = tmp_path / "work" / "store"
    done = sorted(store.glob("shards/part-*.done.json"))
    assert 3 <= len(done) < 16 and not _info(tmp_path / "work")["complete"]
    done_rows = sum(json.loads(p.read_text())["rows"] for p in done)
    resumed = _embed(config)  # the local executor
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the Ray shards are kept: never re-encoded (a Ray worker may still finish a shard after the
    # driver's death, so the resume may find more done than counted above, never fewer)
    encoded = int(re.search(r"encoded_rows=(\d+)", resumed.stdout).group(1))
    assert encoded <= small_wiki.rows - done_rows
    assert _files(tmp_path / "work") == _files(local_store)
    assert _info(tmp_path / "work") == _info(local_store)
    assert not list(store.rglob(".*tmp-*"))


def _embed_remote(config: Path, url: str, mirror: Path, *flags: str, kill_at: str | None = None):
    os.environ["ALBAT_WORK_MIRROR"] = str(mirror)
    try:
        return _embed(config, "--work", url, *flags, kill_at=kill_at)
    finally:
        del os.environ["ALBAT_WORK_MIRROR"]


def test_ray_actors_put_shards_on_a_url_work_directory_and_a_killed_run_resumes_elsewhere(
        small_wiki: SmallWiki, tiny_encoder: str, local_store: Path, tmp_path: Path) -> None:
    """`--work file://...` (fsspec's local file system standing in for s3://): the actors write their
    shards to the remote themselves; a run killed after 3 shards leaves recorded shards and an
    incomplete store.json there, and the local executor, from another (empty) mirror, finishes it
    to the local run's store byte for byte."""
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    url = f"file://{tmp_path / 'bucket'}"
    killed = _embed_remote(config, url, tmp_path / "mirror-a", *RAY, kill_at="embed.ray_shard:3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    remote = tmp_path / "bucket" / "store"
    done = sorted(remote.glob("shards/part-*.done.json"))
    assert 3 <= len(done) < 16 and not json.loads((remote / "store.json").read_text())["complete"]
    for record in done:  # every recorded shard's data is there, whole
        assert json.loads(record.read_text())["rows"] == len(np.load(record.with_name(record.name.replace(".done.json", ".emb.npy"))))
    resumed = _embed_remote(config, url, tmp_path / "mirror-b")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    encoded = int(re.search(r"encoded_rows=(\d+)", resumed.stdout).group(1))
    assert encoded <= small_wiki.rows - sum(json.loads(p.read_text())["rows"] for p in done)
    assert _files(tmp_path / "bucket") == _files(local_store)
    assert _info(tmp_path / "bucket") == _info(local_store)
    again = _embed_remote(config, url, tmp_path / "mirror-c", *RAY)  # complete: nothing runs on Ray
    assert again.returncode == 0 and "skipped (complete)" in again.stdout, again.stderr[-3000:]
