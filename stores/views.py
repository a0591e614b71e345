"""DuckDB views over the work directory's Parquet files, opened for reading only."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from albat.stores.embedding_store import EmbeddingStore
from albat.stores.errors import AlbatError
from albat.stores.shard_store import MANIFEST, shard_glob
from albat.stores.workdir import Workdir


def sql_literal(text: str) -> str:
    """A single-quoted SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


# A decision's reason without its numbers ("rejected: near-duplicate of exclude example 3 (similarity
# 0.991)" -> "rejected: near-duplicate of exclude example #"): parentheses holding a number go, every
# other number becomes #. `SELECT reason_kind(reason), count(*) FROM selection GROUP BY 1` groups the
# decisions by cause, not into one group per row.
REASON_KIND = (r"trim(regexp_replace(regexp_replace(regexp_replace(reason, '\s*\([^()]*[0-9][^()]*\)', '', 'g'), "
               r"'[+-]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?', '#', 'g'), '\s+', ' ', 'g'))")


def work_views(work: Workdir) -> dict[str, str]:
    """View name -> Parquet path or glob, for the files that exist: the shared store's and the
    work directory's task's (`Workdir(..., task=NAME)`)."""
    store = EmbeddingStore(work.store)
    candidates = {
        "corpus": store.meta_glob() if store.shard_indices() else None,
        "candidates": work.query / "candidates.parquet",
        "candidate_pairs": work.query / "candidate_pairs.parquet",
        "blocked": work.query / "blocked.parquet",
        "adaptation": work.query / "adaptation.parquet",
        "selection": work.filter / "selection.parquet",
        "mix": work.mix / "weights.parquet",
        "mix_groups": work.mix / "groups.parquet",
        "shards": shard_glob(work.output) if (work.output / MANIFEST).exists() else None,
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
    con.execute(f"CREATE MACRO reason_kind(reason) AS {REASON_KIND}")
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
