"""The command line: instant help, and bad input answered with one clear line, exit 2, and nothing
half-written left behind."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SmallWiki, albat

from albat.pipeline.cli import STAGES


@pytest.mark.parametrize("command", [[], *[[s] for s in STAGES], ["run"], ["sql"], ["verify"]])
def test_help_is_instant(command: list[str]) -> None:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "albat.pipeline.cli", *command, "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    elapsed = time.perf_counter() - started
    assert result.returncode == 0 and "usage: albat" in result.stdout
    assert elapsed < 1.0, f"albat {' '.join(command)} --help took {elapsed:.2f}s"


def test_help_does_not_import_heavy_modules() -> None:
    code = ("import sys; from albat.pipeline.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'faiss', 'sentence_transformers', 'duckdb', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "[]"


def test_installs_as_one_albat_package_a_users_own_modules_cannot_shadow(tmp_path: Path) -> None:
    # A user's project with its own pipeline.py and stores/ folder, run from that folder.
    (tmp_path / "pipeline.py").write_text("raise SystemExit('the user pipeline.py was imported')\n")
    (tmp_path / "stores").mkdir()
    (tmp_path / "stores" / "__init__.py").write_text("raise SystemExit('the user stores/ was imported')\n")
    code = ("import albat, albat.pipeline.cli, albat.stores.workdir; "
            "print(albat.__version__, albat.pipeline.cli.__name__, albat.stores.workdir.__name__)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.1.0", "albat.pipeline.cli", "albat.stores.workdir"]


def _error(capsys: pytest.CaptureFixture, *args: object) -> str:
    capsys.readouterr()
    rc = albat(*args, "--quiet")
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("albat: error: ")
    return err


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name != ".lock") if path.exists() else []


def test_missing_text_column(small_wiki: SmallWiki, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _error(capsys, "embed", "--work", tmp_path / "w", "--input", small_wiki.corpus, "--text-column", "body")
    assert str(small_wiki.corpus) in err and "'body'" in err and "--text-column" in err and "title" in err
    assert _files(tmp_path / "w") == []


@pytest.mark.parametrize("bad, what", [(None, "null"), ("   ", "empty")])
def test_null_or_empty_text(bad: str | None, what: str, small_wiki: SmallWiki, tmp_path: Path,
                            capsys: pytest.CaptureFixture, tiny_encoder: str) -> None:
    rows = pq.read_table(small_wiki.corpus).to_pylist()[:30]
    rows[17]["text"] = bad
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(rows), corpus)
    err = _error(capsys, "embed", "--work", tmp_path / "w", "--input", corpus, "--encoder", tiny_encoder)
    assert f"{corpus} row 17: {what} text in column 'text'" in err and "--skip-empty" in err
    assert _files(tmp_path / "w") == []
    # the suggested fix works and keeps the other rows with their row numbers
    assert albat("embed", "--work", tmp_path / "w", "--input", corpus, "--encoder", tiny_encoder, "--skip-empty",
                 "--quiet") == 0
    meta = pq.read_table(next((tmp_path / "w" / "store" / "shards").glob("*.meta.parquet"))).to_pydict()
    assert len(meta["albat_row"]) == 29 and 17 not in meta["albat_row"]


def test_unreadable_parquet(tmp_path: Path, small_wiki: SmallWiki, capsys: pytest.CaptureFixture) -> None:
    data = small_wiki.corpus.read_bytes()
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(data[: len(data) // 2])
    err = _error(capsys, "embed", "--work", tmp_path / "w", "--input", broken)
    assert str(broken) in err and "not a readable Parquet file" in err
    assert _files(tmp_path / "w") == []


def test_duplicated_ids(tmp_path: Path, small_wiki: SmallWiki, capsys: pytest.CaptureFixture, tiny_encoder: str) -> None:
    rows = pq.read_table(small_wiki.corpus).to_pylist()[:20]
    rows[11]["id"] = rows[3]["id"]
    corpus = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_pylist(rows), corpus)
    err = _error(capsys, "embed", "--work", tmp_path / "w", "--input", corpus, "--id-column", "id",
                 "--encoder", tiny_encoder)
    assert f"id {rows[3]['id']} appears 2 times" in err and f"{corpus} row 3 and {corpus} row 11" in err
    assert "drop --id-column" in err
    assert not (tmp_path / "w").exists()  # refused before anything is written


def test_query_before_embed(tmp_path: Path, small_wiki: SmallWiki, capsys: pytest.CaptureFixture) -> None:
    err = _error(capsys, "query", "--work", tmp_path / "w", "--adaptation", small_wiki.adaptation)
    assert "albat embed" in err


def test_unknown_config_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[embed]\ntext_colum = 'x'\n")
    err = _error(capsys, "run", "--config", config)
    assert "unknown key 'embed.text_colum'" in err and str(config) in err


def test_unknown_method(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "w" / "tasks/default/_stages").mkdir(parents=True)
    (tmp_path / "w" / "tasks/default/_stages" / "query.json").write_text('{"fingerprint": "x", "summary": {}}')
    err = _error(capsys, "filter", "--work", tmp_path / "w", "--method", "oracle-of-delphi")
    assert "unknown selection method 'oracle-of-delphi'" in err and "knn" in err


def test_sql_refuses_writes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "w").mkdir()
    capsys.readouterr()
    assert albat("sql", tmp_path / "w", "COPY (SELECT 1) TO 'x.csv'") == 2
    assert "only read-only queries" in capsys.readouterr().err
    assert not (REPO / "x.csv").exists()


def test_query_refuses_a_changed_checkpoint(tmp_path: Path, small_wiki: SmallWiki, tiny_encoder: str,
                                            capsys: pytest.CaptureFixture) -> None:
    """Same encoder path, other weights: the stored probe embedding no longer matches."""
    import shutil

    from conftest import make_tiny_encoder

    encoder = tmp_path / "encoder"
    shutil.copytree(tiny_encoder, encoder)
    work = tmp_path / "w"
    assert albat("embed", "--work", work, "--input", small_wiki.corpus, "--encoder", encoder, "--quiet") == 0
    assert albat("index", "--work", work, "--quiet") == 0
    shutil.rmtree(encoder)
    shutil.copytree(make_tiny_encoder(tmp_path / "other", seed=1), encoder)
    from albat.pipeline.encoder_backends import load_backend

    load_backend.cache_clear()  # a new process would load the new weights too
    err = _error(capsys, "query", "--work", work, "--adaptation", small_wiki.adaptation)
    assert "gives different embeddings than when the store was built" in err
    assert not (work / "tasks/default/query").exists()


def test_a_failed_rerun_keeps_the_completed_stage(tmp_path: Path, small_wiki: SmallWiki, tiny_encoder: str,
                                                  capsys: pytest.CaptureFixture) -> None:
    """Bad options on a rerun fail before anything is replaced: the earlier results stay complete."""
    work = tmp_path / "w"
    common = ("--work", work, "--quiet")
    assert albat("run", *common, "--input", small_wiki.corpus, "--encoder", tiny_encoder, "--adaptation",
                 small_wiki.adaptation, "--dedup-threshold", "0.99999", "--budget", "5") == 0
    before = {p: p.read_bytes() for p in work.rglob("*") if p.is_file() and p.name != ".lock"}
    _error(capsys, "query", *common, "--adaptation", small_wiki.adaptation, "--query-encoder", "all-MiniLM-L6-v2")
    _error(capsys, "filter", *common, "--budget", "100000")
    after = {p: p.read_bytes() for p in work.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before
    capsys.readouterr()
    assert albat("run", *common, "--input", small_wiki.corpus, "--encoder", tiny_encoder, "--adaptation",
                 small_wiki.adaptation, "--dedup-threshold", "0.99999", "--budget", "5") == 0
    assert capsys.readouterr().out.count("skipped") == 5
