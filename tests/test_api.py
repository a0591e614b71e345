"""The Python API (albat.api): stages as calls returning results, options checked by the CLI's schema."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import albat
from albat.stores.errors import AlbatError
from conftest import REPO


@pytest.fixture(scope="module")
def pipeline_run(small_wiki, tiny_encoder, tmp_path_factory):
    """One Pipeline run stage by stage on the small corpus; (pipeline, results by stage)."""
    work = tmp_path_factory.mktemp("api") / "work"
    p = albat.Pipeline(work, seed=0, quiet=True)
    results = {
        "embed": p.embed(input=[small_wiki.corpus], id_column="id", keep_columns=["topic"], encoder=tiny_encoder,
                         shard_rows=64, threads=1, dtype="float32"),
        "index": p.index(),
        "query": p.query(adaptation=small_wiki.adaptation, exclude=[small_wiki.eval], k=8, dedup_threshold=0.99999),
        "filter": p.select(method="knn", budget=20),
        "emit": p.emit(shard_rows=5),
    }
    return p, results


def test_import_albat_stays_light():
    code = ("import sys, albat; heavy = [m for m in ('torch', 'faiss', 'duckdb', 'pyarrow', 'albat.api', 'matplotlib') "
            "if m in sys.modules]; print(heavy); assert not heavy, heavy; assert callable(albat.Pipeline)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr


def test_stages_return_results(pipeline_run, small_wiki):
    p, r = pipeline_run
    assert r["embed"].summary["rows"] == small_wiki.rows and not r["embed"].skipped
    assert r["embed"].paths["store"] == p.work.store
    assert r["query"]["adaptation"] == 8 and r["query"]["candidates"] > 0
    selection = r["filter"]
    assert isinstance(selection, albat.Selection)
    table = selection.table
    assert table.num_rows == r["filter"]["considered"]
    kept = selection.kept
    assert kept.num_rows == 20 == r["filter"]["kept"]
    assert kept.column("selection_rank").to_pylist() == sorted(kept.column("selection_rank").to_pylist())
    assert all(kept.column("keep").to_pylist())
    out = r["emit"]
    assert isinstance(out, albat.Output)
    assert out.files and all(f.exists() for f in out.files)
    assert out.manifest["rows"] == out.table().num_rows == r["emit"]["rows"] == 28  # 20 selected + 8 adaptation
    assert out.to_pandas()["albat_weight"].notna().all()


def test_rerun_is_skipped_and_options_carry_over(pipeline_run):
    p, r = pipeline_run
    again = p.select()  # method and budget remembered from the earlier call
    assert again.skipped and again.summary == r["filter"].summary
    assert p.config["query"]["k"] == 8 and p.config["filter"]["budget"] == 20
    assert p.run()["emit"].skipped


def test_sql_returns_a_table(pipeline_run):
    p, _ = pipeline_run
    table = p.sql("SELECT reason_kind(reason) AS kind, count(*) AS n FROM selection GROUP BY 1 ORDER BY n DESC")
    kinds = table.column("kind").to_pylist()
    assert all(not any(ch.isdigit() for ch in k) for k in kinds)
    assert sum(table.column("n").to_pylist()) == p.select().summary["considered"]
    assert len(kinds) < 6  # a handful of causes, not one group per row


@pytest.mark.parametrize("call, message", [
    (lambda p: p.query(k=0), "albat query(k=...): query.k = 0: too small; give an integer >= 1"),
    (lambda p: p.select(budget="many"), "albat select(budget=...): filter.budget = \"many\": not an integer"),
    (lambda p: p.index(memory_budget="lots"), "memory_budget"),
    (lambda p: p.emit(colour="red"), "unknown key 'emit.colour'"),
    (lambda p: p.select(method="knn", epsilon=2.0), "unknown key 'filter.epsilon' for method knn"),
])
def test_bad_options_raise_one_line_before_running(pipeline_run, call, message):
    p, _ = pipeline_run
    before = dict(p.config["filter"])
    with pytest.raises(AlbatError) as err:
        call(p)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert p.config["filter"] == before  # a refused option is not remembered


def test_unknown_section_and_runtime_checks(tmp_path):
    with pytest.raises(AlbatError, match="unknown section"):
        albat.Pipeline(tmp_path / "w", embedding={"input": []})
    with pytest.raises(AlbatError, match="quiet"):
        albat.Pipeline(tmp_path / "w", quiet="yes please")


def test_module_functions_match_the_cli(small_wiki, tiny_encoder, tmp_path):
    """`albat.run(config)` builds the same selection as `albat run --config`."""
    from conftest import albat as cli, small_run_config

    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    assert cli("run", "--config", config, "--quiet") == 0
    cli_selection = pq.read_table(tmp_path / "work" / "tasks/default/filter" / "selection.parquet")
    results = albat.run(config, work=tmp_path / "api-work", quiet=True)
    assert list(results) == ["embed", "index", "query", "filter", "emit"]
    api_selection = results["filter"].table
    assert api_selection.drop(["reason"]).equals(cli_selection.drop(["reason"]))
    assert results["filter"].kept.column("id").to_pylist() == \
        albat.select(tmp_path / "api-work", method="knn", budget=20, quiet=True).kept.column("id").to_pylist()
    assert isinstance(albat.sql(tmp_path / "api-work", "SELECT count(*) AS n FROM shards").column("n")[0].as_py(), int)


def test_path_objects_are_accepted(pipeline_run):
    p, _ = pipeline_run
    assert isinstance(p.config["embed"]["input"][0], str)
    assert Path(p.config["embed"]["input"][0]).exists()
    assert np.isclose(sum(p.emit().table().column("albat_weight").to_pylist()[8:]), 8.0)  # λ n_A spread over m


def test_preview_writes_nothing_and_sql_joins_it(pipeline_run):
    p, r = pipeline_run
    selection_file = r["filter"].paths["selection"]
    before = selection_file.read_bytes()
    preview = p.preview(method="random", budget=5)
    assert preview.summary["method"] == "random" and preview.summary["kept"] == 5 and not preview.paths
    assert preview.kept.num_rows == 5
    assert selection_file.read_bytes() == before and p.config["filter"]["method"] == "knn"
    both = p.sql("SELECT count(*) AS n FROM preview v JOIN selection s ON s.id = v.id WHERE v.keep AND s.keep",
                 preview=preview.table)
    assert 0 <= both.column("n")[0].as_py() <= 5
    with pytest.raises(AlbatError, match="preview"):
        p.preview(budget=-1)
