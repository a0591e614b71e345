"""The published set, a folder every reader opens as a folder:

    OUTPUT/data/part-00000.parquet ...   the shards, alone: `pandas.read_parquet(OUTPUT/data)`,
                                         `pyarrow.dataset`, polars, Spark, `load_dataset("parquet",
                                         data_dir=OUTPUT/data)` read the folder itself
    OUTPUT/manifest.json                 config, seeds, counts, each shard's rows and SHA-256
    OUTPUT/README.md                     the dataset card (stores.dataset_card): `load_dataset(OUTPUT)`;
                                         its SHA-256 is the manifest's `card_sha256`
    OUTPUT/_SUCCESS                      written last: the set is complete

Everything is written into a hidden staging directory, checksummed, the manifest, the card and
`_SUCCESS` last, and the directory swapped in by rename, so a reader sees either the previous
complete set or the new complete set, never a half-written shard. A set of the earlier flat layout
(shards beside manifest.json, no _SUCCESS) still reads through its manifest; `albat emit`
republishes it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa

from albat.stores.atomic import atomic_path, read_json, sha256_file, staged_directory, write_json
from albat.stores.dataset_card import CARD, dataset_card
from albat.stores.errors import AlbatError
from albat.stores.faults import crash_point
from albat.stores.tables import write_table

MANIFEST = "manifest.json"
DATA = "data"  # the folder holding the shards and nothing else
SUCCESS = "_SUCCESS"  # written last (readers skip `_` names)
SHARD_GLOB = f"{DATA}/part-*.parquet"


def shard_file(index: int) -> str:
    return f"part-{index:05d}.parquet"


def publish_shards(directory: Path, tables: Iterable[pa.Table], manifest: dict[str, Any]) -> dict[str, Any]:
    """Write each table as one shard under data/, then the manifest, the dataset card and
    _SUCCESS, then swap the whole set in. Shard paths in the manifest are relative to `directory`."""
    with staged_directory(Path(directory)) as staging:
        shards, schema = [], None
        (staging / DATA).mkdir()
        for index, table in enumerate(tables):
            path = staging / DATA / shard_file(index)
            write_table(table, path)
            schema = schema or table.schema
            shards.append({"path": f"{DATA}/{path.name}", "rows": table.num_rows, "sha256": sha256_file(path)})
            crash_point("emit.shard")
        manifest = {**manifest, "shards": shards, "rows": sum(s["rows"] for s in shards)}
        card = dataset_card(manifest, schema if schema is not None else pa.schema([])).encode()
        manifest["card_sha256"] = hashlib.sha256(card).hexdigest()
        write_json(staging / MANIFEST, manifest)
        with atomic_path(staging / CARD) as tmp:
            tmp.write_bytes(card)
        with atomic_path(staging / SUCCESS) as tmp:
            tmp.write_bytes(b"")
    return manifest


def shard_glob(directory: Path) -> str:
    """The glob of a published set's shards (data/part-*.parquet; the earlier flat layout's part-*.parquet)."""
    directory = Path(directory)
    return str(directory / (SHARD_GLOB if (directory / DATA).is_dir() else "part-*.parquet"))


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise AlbatError(f"{directory}: no manifest; run `albat emit` first")
    return read_json(path)


def shard_paths(directory: Path) -> list[Path]:
    """The shards a complete set names, in order (the manifest is the source of truth)."""
    return [Path(directory) / s["path"] for s in read_manifest(directory)["shards"]]


def set_damage(directory: Path) -> str | None:
    """What is wrong with a published set (manifest unreadable, a shard missing or changed, no
    _SUCCESS: not complete, or of the earlier layout), or None."""
    if not (Path(directory) / SUCCESS).is_file():
        return f"{Path(directory) / SUCCESS}: missing (an incomplete set, or one of the earlier layout)"
    try:
        manifest = read_json(Path(directory) / MANIFEST)
        shards = [(Path(directory) / s["path"], s["sha256"]) for s in manifest["shards"]]
        shards.append((Path(directory) / CARD, manifest["card_sha256"]))
    except (OSError, ValueError, KeyError, TypeError):
        return f"{Path(directory) / MANIFEST}: missing or damaged"
    for path, digest in shards:
        if not path.is_file() or sha256_file(path) != digest:
            return f"{path}: missing or changed since it was published"
    return None
