"""`albat sql`: read-only DuckDB over a work directory's views (corpus, candidates, selection, shards...)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from albat.stores.atomic import atomic_path
from albat.stores.errors import AlbatError
from albat.stores.shard_store import MANIFEST
from albat.stores.views import connect, fetch_table, work_views
from albat.stores.workdir import Workdir


def check_read_only(con, sql: str) -> None:
    """Accept exactly one SELECT-like statement (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE). EXPLAIN is
    refused: EXPLAIN ANALYZE executes its statement, which may write (COPY)."""
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise AlbatError(f"SQL does not parse ({str(exc).splitlines()[0]})") from None
    if len(statements) != 1:
        raise AlbatError(f"give exactly one SQL statement, got {len(statements)}")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise AlbatError(f"only read-only queries (SELECT, WITH, DESCRIBE, SHOW) are allowed, not "
                         f"{statements[0].type.name}; use --out FILE to save results")


def check_out_path(work: Workdir, out: str) -> Path:
    """`--out` must name a new or plain file outside the folders albat writes (store, index, query,
    filter, _stages, the emitted sets): writing there would replace albat's own files."""
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise AlbatError(f"{out}: --out must end in .csv or .parquet")
    if path.is_dir():
        raise AlbatError(f"{out}: is a directory; give --out a file name ending in {suffix}")
    real = os.path.realpath(path)
    owned = [*work.own_folders(), *_emitted_sets(work)]
    for folder in owned:
        inside = os.path.realpath(folder)
        if real == inside or real.startswith(inside + os.sep):
            raise AlbatError(f"{out}: inside {folder}, one of albat's own folders; write --out outside the store, "
                             "index, tasks, query, filter, _stages and output folders")
    root = os.path.realpath(work.root)
    if os.path.dirname(real) == root and os.path.basename(real).startswith("."):
        raise AlbatError(f"{out}: a hidden name inside {work.root}, where albat stages its writes; choose another "
                         "--out name")
    return path


def _emitted_sets(work: Workdir) -> list[Path]:
    """The output set of the last emit, and any folder of the work directory holding a manifest
    (the earlier layout's sets beside the store; every task's lie inside WORK/tasks, albat's own)."""
    sets = {work.output}
    if work.root.is_dir():
        sets.update(p.parent for p in work.root.glob(f"*/{MANIFEST}"))
        sets.update(p.parent for p in work.root.glob(f"*/*/{MANIFEST}"))
    return sorted(sets)


def check_csv_columns(table, out: str) -> None:
    """CSV holds flat values only: refuse lists, structs and maps with one line."""
    import pyarrow as pa

    for field in table.schema:
        if pa.types.is_nested(field.type):
            raise AlbatError(f"{out}: column '{field.name}' holds {field.type}, which CSV cannot hold; write "
                             f"--out {Path(out).with_suffix('.parquet').name}, or select it as text "
                             f"(CAST({field.name} AS VARCHAR))")


def _failed(exc: Exception, work: Workdir) -> AlbatError:
    views = ", ".join(work_views(work)) or "none yet"
    return AlbatError(f"query failed: {str(exc).splitlines()[0]}; query the work directory's views ({views})")


def query_table(work_dir: str | Path, sql: str, tables: dict[str, Any] | None = None, task: str = "default"):
    """One read-only query over the work directory's views, as a pyarrow Table (the Python API);
    `tables`: more views, name -> a pyarrow Table or pandas DataFrame in memory."""
    import duckdb

    work = Workdir(work_dir, task=task)
    if work.root.exists():
        work.require_task()
    con = connect(work)
    try:
        for name, table in (tables or {}).items():
            con.register(name, table)
        check_read_only(con, sql)
        try:
            return fetch_table(con, sql)
        except duckdb.Error as exc:
            raise _failed(exc, work) from None
    finally:
        con.close()


def run_sql(work_dir: str | Path, sql: str, out: str | None = None, task: str = "default") -> str:
    """Run one read-only query over the shared store and one task's tables; print it as a table, or
    write CSV/Parquet (by suffix) to `out` (Parquet keeps nested columns; CSV refuses them)."""
    import duckdb

    work = Workdir(work_dir, task=task)
    if work.root.exists():
        work.require_task()
    con = connect(work)
    try:
        check_read_only(con, sql)
        try:
            if out:
                path = check_out_path(work, out)
                table = fetch_table(con, sql)
                suffix = path.suffix.lower()
                if suffix == ".csv":
                    check_csv_columns(table, out)
                with atomic_path(path) as tmp:
                    if suffix == ".csv":
                        import pyarrow.csv as pcsv

                        pcsv.write_csv(table, tmp)
                    else:
                        import pyarrow.parquet as pq

                        pq.write_table(table, tmp)
                return f"wrote {table.num_rows} rows to {out}"
            relation = con.sql(sql)
            return str(relation) if relation is not None else ""
        except duckdb.Error as exc:
            raise _failed(exc, work) from None
    finally:
        con.close()
