"""The emitted shard set: `part-00000.parquet`, ... and `manifest.json`, published atomically.

Shards are written into a hidden staging directory, checksummed, the manifest written last,
and the directory swapped in by rename, so a reader (DuckDB, `datasets`, a trainer) sees either
the previous complete set or the new complete set, never a half-written shard.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa

from stores.atomic import read_json, sha256_file, staged_directory, write_json
from stores.errors import AlbatError
from stores.faults import crash_point
from stores.tables import write_table

MANIFEST = "manifest.json"


def shard_file(index: int) -> str:
    return f"part-{index:05d}.parquet"


def publish_shards(directory: Path, tables: Iterable[pa.Table], manifest: dict[str, Any]) -> dict[str, Any]:
    """Write each table as one shard, then the manifest, then swap the whole set in."""
    with staged_directory(Path(directory)) as staging:
        shards = []
        for index, table in enumerate(tables):
            path = staging / shard_file(index)
            write_table(table, path)
            shards.append({"path": path.name, "rows": table.num_rows, "sha256": sha256_file(path)})
            crash_point("emit.shard")
        manifest = {**manifest, "shards": shards, "rows": sum(s["rows"] for s in shards)}
        write_json(staging / MANIFEST, manifest)
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise AlbatError(f"{directory}: no manifest; run `albat emit` first")
    return read_json(path)


def shard_paths(directory: Path) -> list[Path]:
    """The shards a complete set names, in order (the manifest is the source of truth)."""
    return [Path(directory) / s["path"] for s in read_manifest(directory)["shards"]]


def set_damage(directory: Path) -> str | None:
    """What is wrong with a published set (manifest unreadable, a shard missing or changed), or None."""
    try:
        manifest = read_json(Path(directory) / MANIFEST)
        shards = [(Path(directory) / s["path"], s["sha256"]) for s in manifest["shards"]]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{Path(directory) / MANIFEST}: missing or damaged"
    for path, digest in shards:
        if not path.is_file() or sha256_file(path) != digest:
            return f"{path}: missing or changed since it was published"
    return None
