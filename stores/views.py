"""DuckDB views over the work directory's Parquet files, opened for reading only."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from stores.embedding_store import EmbeddingStore
from stores.errors import AlbatError
from stores.shard_store import MANIFEST
from stores.workdir import Workdir


def sql_literal(text: str) -> str:
    """A single-quoted SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def work_views(work: Workdir) -> dict[str, str]:
    """View name -> Parquet path or glob, for the files that exist."""
    store = EmbeddingStore(work.store)
    candidates = {
        "corpus": store.meta_glob() if store.shard_indices() else None,
        "candidates": work.query / "candidates.parquet",
        "candidate_pairs": work.query / "candidate_pairs.parquet",
        "blocked": work.query / "blocked.parquet",
        "adaptation": work.query / "adaptation.parquet",
        "selection": work.filter / "selection.parquet",
        "shards": str(work.output / "part-*.parquet") if (work.output / MANIFEST).exists() else None,
    }
    return {name: str(path) for name, path in candidates.items()
            if path is not None and ("*" in str(path) or Path(path).exists())}


def connect(work: Workdir) -> Any:
    """An in-memory DuckDB with one view per table of the work directory."""
    import duckdb

    if not work.root.exists():
        raise AlbatError(f"{work.root}: no such work directory")
    con = duckdb.connect(":memory:")
    for name, path in work_views(work).items():
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({sql_literal(path)})")
    # Sandbox: no database file is opened or attached, only files inside the work directory are
    # reachable, and a query cannot change these settings back.
    roots = sorted({str(work.root), os.path.abspath(work.root), os.path.realpath(work.root)})
    con.execute(f"SET allowed_directories = [{', '.join(sql_literal(r.rstrip('/') + '/') for r in roots)}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def fetch_table(con: Any, sql: str) -> Any:
    """Run `sql` and return a pyarrow Table (`to_arrow_table` in DuckDB >= 1.4, older name before)."""
    relation = con.sql(sql)
    fetch = getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table
    return fetch()
