"""albat.pipeline.sql.check_read_only, stores.views.sql_literal, stores.atomic (atomic_path, write_json)."""
from __future__ import annotations

import json

import pytest

from albat.pipeline.sql import check_read_only
from albat.stores.atomic import atomic_path, read_json, remove_stale_temps, temp_name, write_json
from albat.stores.errors import AlbatError
from albat.stores.views import sql_literal

duckdb = pytest.importorskip("duckdb")


@pytest.fixture
def con():
    connection = duckdb.connect(":memory:")
    yield connection
    connection.close()


# ----- check_read_only -----------------------------------------------------------------------
@pytest.mark.parametrize("sql", [
    "SELECT 1",
    "select count(*) from range(10)",
    "SELECT 1;",
    "WITH t AS (SELECT 1 AS x) SELECT * FROM t",
    "DESCRIBE SELECT 1 AS x",
    "SHOW TABLES",
    "SUMMARIZE SELECT 1 AS x",
    "FROM range(3)",
])
def test_read_only_statements_are_accepted(con, sql):
    check_read_only(con, sql)  # no exception
    con.sql(sql)  # and they really are valid statements


@pytest.mark.parametrize("sql, kind", [
    ("COPY (SELECT 1) TO 'out.csv'", "COPY"),
    ("CREATE TABLE t (x INTEGER)", "CREATE"),
    ("CREATE VIEW v AS SELECT 1", "CREATE"),
    ("DELETE FROM t", "DELETE"),
    ("INSERT INTO t VALUES (1)", "INSERT"),
    ("UPDATE t SET x = 2", "UPDATE"),
    ("ATTACH 'other.duckdb'", "ATTACH"),
    ("DROP TABLE t", "DROP"),
    ("SET threads = 1", "SET"),
    ("INSTALL httpfs", "LOAD"),  # DuckDB files INSTALL under LOAD
])
def test_writing_statements_are_refused(con, sql, kind):
    with pytest.raises(AlbatError) as info:
        check_read_only(con, sql)
    msg = str(info.value)
    assert "read-only" in msg
    assert kind in msg


@pytest.mark.parametrize("sql", ["SELECT 1; SELECT 2", "SELECT 1; DELETE FROM t", "SELECT 1;;SELECT 2;"])
def test_two_statements_are_refused(con, sql):
    with pytest.raises(AlbatError, match="exactly one SQL statement, got 2"):
        check_read_only(con, sql)


def test_empty_sql_is_refused(con):
    with pytest.raises(AlbatError, match="got 0"):
        check_read_only(con, "  ")


def test_unparseable_sql_is_an_albat_error(con):
    with pytest.raises(AlbatError, match="does not parse"):
        check_read_only(con, "SELEKT * FROM")


@pytest.mark.parametrize("prefix", ["EXPLAIN ANALYZE", "EXPLAIN"])
def test_explain_is_refused(con, tmp_path, prefix):
    target = tmp_path / "leak.csv"
    sql = f"{prefix} COPY (SELECT 42 AS x) TO {sql_literal(str(target))}"
    with pytest.raises(AlbatError):
        check_read_only(con, sql)
    assert not target.exists()


# ----- sql_literal ---------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["plain", "O'Brien", "''", "a'b'c'", "/tmp/dir with 'quotes'/part-*.parquet",
                                  "semi; DROP TABLE x; --", ""])
def test_sql_literal_round_trips_through_duckdb(con, text):
    literal = sql_literal(text)
    assert literal.startswith("'") and literal.endswith("'")
    assert literal[1:-1].replace("''", "").count("'") == 0  # every inner quote is doubled
    assert con.execute(f"SELECT {literal}").fetchone()[0] == text


def test_sql_literal_by_hand():
    assert sql_literal("it's") == "'it''s'"
    assert sql_literal("a''b") == "'a''''b'"
    assert sql_literal(12) == "'12'"


# ----- atomic_path ---------------------------------------------------------------------------
def test_atomic_path_success_renames_and_leaves_no_temp(tmp_path):
    final = tmp_path / "sub" / "out.txt"
    with atomic_path(final) as tmp:
        assert tmp != final and tmp.parent == final.parent and tmp.name.startswith(".")
        tmp.write_text("done")
        assert not final.exists()  # nothing visible until the body finishes
    assert final.read_text() == "done"
    assert sorted(p.name for p in final.parent.iterdir()) == ["out.txt"]


def test_atomic_path_failure_leaves_no_temp_and_no_final(tmp_path):
    final = tmp_path / "out.txt"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(final) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("boom")
    assert not final.exists()
    assert not temp_name(final).exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_failure_keeps_the_previous_file(tmp_path):
    final = tmp_path / "out.json"
    final.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(final) as tmp:
            tmp.write_text("new")
            raise KeyboardInterrupt  # BaseException too
    assert final.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_path_failure_removes_a_temp_directory(tmp_path):
    final = tmp_path / "index_dir"
    with pytest.raises(ValueError):
        with atomic_path(final) as tmp:
            (tmp / "nested").mkdir(parents=True)
            (tmp / "nested" / "f.bin").write_bytes(b"x")
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_body_that_writes_nothing_is_an_error_and_leaves_nothing(tmp_path):
    final = tmp_path / "never.txt"
    with pytest.raises(FileNotFoundError):
        with atomic_path(final):
            pass
    assert list(tmp_path.iterdir()) == []


def test_remove_stale_temps_only_removes_temps(tmp_path):
    keep = tmp_path / "part-00000.parquet"
    keep.write_text("data")
    temp_name(keep).write_text("stale")
    (tmp_path / ".x.tmp-999").mkdir()
    remove_stale_temps(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["part-00000.parquet"]


# ----- write_json ----------------------------------------------------------------------------
def test_write_json_is_stable(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    obj1 = {"zeta": 1, "alpha": {"y": [3, 2, 1], "x": None}, "mid": "text", "path": tmp_path}
    obj2 = {"path": tmp_path, "mid": "text", "alpha": {"x": None, "y": [3, 2, 1]}, "zeta": 1}  # other order
    write_json(a, obj1)
    first = a.read_bytes()
    write_json(a, obj1)
    assert a.read_bytes() == first  # same bytes twice
    write_json(b, obj2)
    assert b.read_bytes() == first  # key order does not matter
    assert first.endswith(b"\n")
    text = first.decode()
    assert text.index('"alpha"') < text.index('"mid"') < text.index('"path"') < text.index('"zeta"')
    assert read_json(a) == json.loads(text) == {"alpha": {"x": None, "y": [3, 2, 1]}, "mid": "text",
                                                "path": str(tmp_path), "zeta": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]  # no temporaries left
