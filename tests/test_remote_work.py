"""Work directories on object storage (stores.remote): which files are records, the push order
(data before records, records removed first), pulls that trust only recorded shards, and the whole
pipeline on a `file://` URL (fsspec's local file system standing in for s3://) run from two
different mirrors, the second skipping every stage."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SmallWiki, albat, small_run_config

from albat.stores.remote import Mirror, is_record, is_work_url, push_order, recorded_only


def test_records_are_done_files_store_description_stage_records_and_success() -> None:
    assert is_record("store/shards/part-00003.done.json")
    assert is_record("store/store.json")
    assert is_record("_stages/index.json")
    assert is_record("tasks/math/_stages/emit.json")
    assert is_record("tasks/math/output/_SUCCESS")
    assert not is_record("store/shards/part-00003.emb.npy")
    assert not is_record("index/index_infos.json")
    assert not is_record("tasks/math/output/manifest.json")
    assert not is_record("tasks/_stages_notes/x.json")


def test_push_order_puts_data_first_and_shard_records_before_the_store_description() -> None:
    rels = ["store/store.json", "store/shards/part-00000.done.json", "store/shards/part-00000.emb.npy",
            "_stages/index.json", "index/knn.index", "store/ids.sorted.npy"]
    assert push_order(rels) == ["index/knn.index", "store/ids.sorted.npy", "store/shards/part-00000.emb.npy",
                                "store/shards/part-00000.done.json", "_stages/index.json", "store/store.json"]


def test_a_shard_without_its_record_and_temporaries_are_not_trusted() -> None:
    rels = {"store/store.json", "store/shards/part-00000.emb.npy", "store/shards/part-00000.meta.parquet",
            "store/shards/part-00000.done.json", "store/shards/part-00001.emb.npy",
            "store/shards/part-00001.meta.parquet", "store/shards/.part-00002.emb.npy.tmp-12", "index/knn.index"}
    assert recorded_only(rels) == {"store/store.json", "store/shards/part-00000.emb.npy",
                                   "store/shards/part-00000.meta.parquet", "store/shards/part-00000.done.json",
                                   "index/knn.index"}


def test_is_work_url_takes_urls_only() -> None:
    assert is_work_url("s3://bucket/run") and is_work_url("file:///tmp/x") and is_work_url("memory://w")
    assert not is_work_url("work") and not is_work_url("/abs/work") and not is_work_url(Path("s3:/x"))
    assert not is_work_url("runs/a://b")  # a scheme starts the string


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def test_push_uploads_changes_in_order_and_deletes_records_first(tmp_path: Path, monkeypatch) -> None:
    local = tmp_path / "mirror"
    (local / "store" / "shards").mkdir(parents=True)
    (local / "store" / "shards" / "part-00000.emb.npy").write_bytes(b"vectors")
    (local / "store" / "shards" / "part-00000.done.json").write_text("{}")
    (local / "store" / "store.json").write_text('{"complete": true}')
    mirror = Mirror(f"file://{tmp_path / 'remote'}", local)
    events = []
    put, rm = mirror.fs.put_file, mirror.fs.rm_file
    monkeypatch.setattr(mirror.fs, "put_file", lambda src, dst, **kw: (events.append(("put", dst.split("remote/")[1])),
                                                                      put(src, dst, **kw))[1])
    monkeypatch.setattr(mirror.fs, "rm_file", lambda path, **kw: (events.append(("rm", path.split("remote/")[1])),
                                                                  rm(path, **kw))[1])
    assert mirror.push() == 3
    assert events == [("put", "store/shards/part-00000.emb.npy"), ("put", "store/shards/part-00000.done.json"),
                      ("put", "store/store.json")]
    assert _tree(tmp_path / "remote") == _tree(local)
    events.clear()
    assert mirror.push() == 0 and events == []  # nothing changed: nothing moves
    (local / "store" / "shards" / "part-00000.emb.npy").unlink()
    (local / "store" / "shards" / "part-00000.done.json").unlink()
    (local / "store" / "store.json").write_text('{"complete": false}')
    assert mirror.push() == 1
    assert events == [("rm", "store/shards/part-00000.done.json"), ("rm", "store/shards/part-00000.emb.npy"),
                      ("put", "store/store.json")]
    assert _tree(tmp_path / "remote") == _tree(local)


def test_pull_copies_only_recorded_shards_and_follows_remote_removals(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    (remote / "store" / "shards").mkdir(parents=True)
    for name, data in {"part-00000.emb.npy": b"a", "part-00000.done.json": b"{}", "part-00001.emb.npy": b"half"}.items():
        (remote / "store" / "shards" / name).write_bytes(data)
    (remote / "store" / "store.json").write_text("{}")
    mirror = Mirror(f"file://{remote}", tmp_path / "mirror")
    assert mirror.pull() == 3
    assert set(_tree(tmp_path / "mirror")) == {"store/store.json", "store/shards/part-00000.emb.npy",
                                               "store/shards/part-00000.done.json"}
    assert mirror.pull() == 0  # unchanged: nothing copied again
    (remote / "store" / "shards" / "part-00000.done.json").unlink()  # another run dropped the shard's record
    mirror.pull()
    assert set(_tree(tmp_path / "mirror")) == {"store/store.json"}
    assert json.loads((tmp_path / "mirror" / ".albat-mirror.json").read_text())["url"] == f"file://{remote}"


def test_the_pipeline_runs_on_a_url_and_a_second_mirror_skips_every_stage(
        small_wiki: SmallWiki, tiny_encoder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    url = f"file://{tmp_path / 'bucket' / 'run'}"
    monkeypatch.setenv("ALBAT_WORK_MIRROR", str(tmp_path / "mirror-a"))
    assert albat("run", "--config", config, "--work", url, "--quiet") == 0
    remote = tmp_path / "bucket" / "run"
    first = _tree(remote)
    assert first == _tree(tmp_path / "mirror-a")
    assert "tasks/default/output/_SUCCESS" in first and "store/store.json" in first
    assert json.loads(first["store/store.json"])["complete"] is True
    capsys.readouterr()
    monkeypatch.setenv("ALBAT_WORK_MIRROR", str(tmp_path / "mirror-b"))  # another machine: an empty mirror
    assert albat("run", "--config", config, "--work", url, "--quiet") == 0
    out = capsys.readouterr().out
    assert out.count("skipped (complete)") == 5, out
    assert _tree(remote) == first  # nothing rewritten
    assert albat("verify", url) == 0
    assert albat("sql", url, "SELECT count(*) AS n FROM selection WHERE keep") == 0
    assert "20" in capsys.readouterr().out


def test_a_url_with_no_file_system_installed_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert albat("index", "--work", "nosuchscheme://bucket/run", "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("albat: error: --work nosuchscheme://bucket/run: no file system for 'nosuchscheme://'")
    assert "\n" not in err and "pip install" in err
