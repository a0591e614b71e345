"""`albat sql`: read-only DuckDB over a work directory's views (corpus, candidates, selection, shards...)."""
from __future__ import annotations

from pathlib import Path

from stores.atomic import atomic_path
from stores.errors import AlbatError
from stores.views import connect, fetch_table, work_views
from stores.workdir import Workdir


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


def run_sql(work_dir: str | Path, sql: str, out: str | None = None) -> str:
    """Run one read-only query; print it as a table, or write CSV/Parquet (by suffix) to `out`."""
    import duckdb

    work = Workdir(work_dir)
    con = connect(work)
    try:
        check_read_only(con, sql)
        try:
            if out:
                table = fetch_table(con, sql)
                suffix = Path(out).suffix.lower()
                if suffix not in (".csv", ".parquet"):
                    raise AlbatError(f"{out}: --out must end in .csv or .parquet")
                with atomic_path(Path(out)) as tmp:
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
            views = ", ".join(work_views(work)) or "none yet"
            raise AlbatError(f"query failed: {str(exc).splitlines()[0]}; query the work directory's views "
                             f"({views})") from None
    finally:
        con.close()
