"""The embedding store: sharded float32 vectors (.npy) beside Parquet metadata, with stable int64 ids.

Layout of `STORE/`:
    store.json                      encoder, dimension, columns, shard size; `complete` once done
    shards/part-00000.emb.npy       (rows, dim) float32, L2-normalised
    shards/part-00000.meta.parquet  albat_id, albat_source, albat_row, albat_text_hash + user columns
    shards/part-00000.pair.npy      (rows, dim) float32 of the pair column (query side), if one is set
    shards/part-00000.done.json     completion record: rows, id range, checksums (written last)
    ids.sorted.npy, ids.order.npy   every id sorted, and its row position (id lookup by binary search)

Shard i holds rows [i*shard_rows, (i+1)*shard_rows) of the corpus stream (files in sorted order),
so names and contents do not depend on batch size or worker count, and a rerun skips every shard
that has a completion record.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from albat.stores.chat import as_texts
from albat.stores.atomic import read_json, remove_stale_temps, sha256_file, write_json
from albat.stores.errors import AlbatError
from albat.stores.faults import crash_point
from albat.stores.tables import write_array, write_table

FORMAT_VERSION = 1
ID = "albat_id"
SOURCE = "albat_source"
ROW = "albat_row"
TEXT_HASH = "albat_text_hash"
RESERVED = (ID, SOURCE, ROW, TEXT_HASH)
# What query adds to its adaptation table (query/adaptation.parquet): query_idx first, then every
# column of the adaptation file, then their file and row.
EXAMPLE_BOOKKEEPING = ("query_idx", SOURCE, ROW)
NORM_TOLERANCE = 1e-3  # a stored vector's L2 norm is 1 within this
PARTS = ("meta", "text", "pair")  # a shard's files: metadata, text vectors, pair vectors

_SPACES = re.compile(r"\s+")


def text_hash(text: str) -> int:
    """64-bit signed hash of a whitespace- and case-normalised text, for exact-duplicate checks."""
    norm = _SPACES.sub(" ", text).strip().casefold().encode("utf-8")
    return int.from_bytes(hashlib.blake2b(norm, digest_size=8).digest(), "little", signed=True)


def shard_name(index: int) -> str:
    return f"part-{index:05d}"


@dataclass
class ShardPaths:
    emb: Path
    meta: Path
    done: Path
    pair: Path


class EmbeddingStore:
    """Read and write one embedding store directory."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.shard_dir = self.root / "shards"
        self.info_path = self.root / "store.json"
        self._checked: set[tuple[int, str]] = set()  # (shard, part) whose checksum, shape and norms were checked
        self._ids_checked = False

    # ----- description -------------------------------------------------------------------
    def read_info(self) -> dict[str, Any] | None:
        """`store.json`, or None when it is missing or does not parse as one (truncated, edited)."""
        try:
            info = read_json(self.info_path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or not isinstance(info.get("dim"), int) \
                or not isinstance(info.get("fingerprint", ""), str) or not isinstance(info.get("encoder", {}), dict):
            return None
        return info

    def exists(self) -> bool:
        """A store.json that parses (a damaged one counts as no store: `albat embed` rebuilds it)."""
        return self.read_info() is not None

    @property
    def info(self) -> dict[str, Any]:
        info = self.read_info()
        if info is None and self.info_path.exists():
            raise AlbatError(f"{self.info_path}: damaged (does not parse as a store description); run `albat embed`, "
                             "which rebuilds the store")
        if info is None:
            raise AlbatError(f"{self.root}: no embedding store here; run `albat embed` first")
        return info

    def write_info(self, info: dict[str, Any]) -> None:
        write_json(self.info_path, {"format_version": FORMAT_VERSION, **info})

    def require_complete(self) -> dict[str, Any]:
        info = self.info
        fix = "rerun `albat embed` to finish or repair it"
        if not info.get("complete"):
            raise AlbatError(f"{self.root}: embedding store is incomplete; {fix}")
        shards = info.get("shards")
        if not isinstance(shards, int) or self.shard_indices() != list(range(shards)):
            raise AlbatError(f"{self.shard_dir}: shard completion records do not match store.json's {shards} "
                             f"shards; {fix}")
        return info

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    # ----- shards ----------------------------------------------------------------------------
    def paths(self, index: int) -> ShardPaths:
        base = self.shard_dir / shard_name(index)
        return ShardPaths(emb=base.with_suffix(".emb.npy"), meta=base.with_suffix(".meta.parquet"),
                          done=base.with_suffix(".done.json"), pair=base.with_suffix(".pair.npy"))

    def is_done(self, index: int) -> bool:
        return self.paths(index).done.exists()

    def done_record(self, index: int) -> dict[str, Any] | None:
        """A shard's completion record, or None when it is missing or does not parse as one."""
        try:
            record = read_json(self.paths(index).done)
        except (OSError, ValueError):
            return None
        keys = ("rows", "emb_sha256", "meta_sha256")
        return record if isinstance(record, dict) and all(k in record for k in keys) else None

    def shard_damage(self, index: int, dim: int | None = None, parts: tuple[str, ...] = PARTS) -> str | None:
        """What is wrong with some parts ("meta", "text", "pair") of a finished shard: its record, a
        checksum, the vectors' dtype, shape or norms; None when sound. Reads those parts once."""
        paths, record = self.paths(index), self.done_record(index)
        if record is None:
            return f"{paths.done}: completion record missing or damaged"
        files = {"meta": (paths.meta, record["meta_sha256"]), "text": (paths.emb, record["emb_sha256"]),
                 "pair": (paths.pair, record.get("pair_sha256"))}
        for part in parts:
            path, expected = files[part]
            if expected is None:
                continue  # a store without a pair column
            if not path.is_file():
                return f"{path}: missing"
            if sha256_file(path) != expected:
                return f"{path}: SHA-256 differs from its completion record (damaged or changed)"
            if part == "meta":
                continue
            try:
                vectors = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                return f"{path}: unreadable ({exc})"
            dim = self.dim if dim is None else dim
            if vectors.dtype != np.float32 or vectors.shape != (record["rows"], dim):
                return f"{path}: holds {vectors.dtype} {vectors.shape}, expected float32 ({record['rows']}, {dim})"
            norms = np.linalg.norm(vectors, axis=1) if part == "text" else np.ones(0)
            if len(norms) and not float(np.max(np.abs(norms - 1))) <= NORM_TOLERANCE:
                return f"{path}: vectors are not unit length"
        return None

    def check_shard(self, index: int, parts: tuple[str, ...] = PARTS) -> None:
        """Raise an AlbatError if a part of a shard a reader is about to use is damaged; each part is
        checked once per process, so a stage pays one extra read of what it touches."""
        todo = tuple(p for p in parts if (index, p) not in self._checked)
        if not todo:
            return
        damage = self.shard_damage(index, parts=todo)
        if damage:
            raise AlbatError(f"{damage}; rerun `albat embed`, which re-embeds damaged shards")
        self._checked.update((index, p) for p in todo)

    def write_shard(self, index: int, vectors: np.ndarray, meta: pa.Table,
                    pair_vectors: np.ndarray | None = None) -> dict[str, Any]:
        """Write one shard: vectors and metadata by rename, then the completion record."""
        if len(vectors) != meta.num_rows or (pair_vectors is not None and len(pair_vectors) != meta.num_rows):
            raise ValueError("vectors and metadata disagree on the row count")
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        paths = self.paths(index)
        write_array(np.ascontiguousarray(vectors, dtype=np.float32), paths.emb)
        if pair_vectors is not None:
            write_array(np.ascontiguousarray(pair_vectors, dtype=np.float32), paths.pair)
        write_table(meta, paths.meta)
        crash_point("store.before_done")
        ids = meta.column(ID).to_numpy()
        record = {"shard": shard_name(index), "rows": meta.num_rows,
                  "min_id": int(ids.min()) if len(ids) else None, "max_id": int(ids.max()) if len(ids) else None,
                  "emb_sha256": sha256_file(paths.emb), "meta_sha256": sha256_file(paths.meta)}
        if pair_vectors is not None:
            record["pair_sha256"] = sha256_file(paths.pair)
        write_json(paths.done, record)
        return record

    def clean_temps(self) -> None:
        remove_stale_temps(self.shard_dir)
        remove_stale_temps(self.root)

    def shard_indices(self) -> list[int]:
        """Indices of the finished shards, in order."""
        return sorted(int(p.name.split("-")[1].split(".")[0]) for p in self.shard_dir.glob("part-*.done.json"))

    def done_records(self) -> list[dict[str, Any]]:
        records = []
        for i in self.shard_indices():
            record = self.done_record(i)
            if record is None:
                raise AlbatError(f"{self.paths(i).done}: completion record damaged; rerun `albat embed`, which "
                                 "re-embeds damaged shards")
            records.append(record)
        return records

    def meta_glob(self) -> str:
        return str(self.shard_dir / "part-*.meta.parquet")

    # ----- reading -----------------------------------------------------------------------
    @property
    def pair_column(self) -> str | None:
        return self.info.get("pair_column")

    def vectors(self, index: int, side: str = "text") -> np.ndarray:
        """Memory-mapped vectors of one shard (no copy, no pickle); side "pair" reads the pair column's."""
        if side == "pair" and not self.pair_column:
            raise AlbatError(f"{self.root}: the store has no pair column; re-embed with --pair-column")
        return self._shard_vectors(index, side)

    def _shard_vectors(self, index: int, part: str) -> np.ndarray:
        path = self.paths(index).pair if part == "pair" else self.paths(index).emb
        self.check_shard(index, (part,))
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise AlbatError(f"{path}: unreadable embedding shard ({exc}); delete it and rerun `albat embed`") from None

    def metadata(self, index: int, columns: list[str] | None = None) -> pa.Table:
        path = self.paths(index).meta
        self.check_shard(index, ("meta",))
        try:
            return pq.read_table(path, columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise AlbatError(f"{path}: unreadable metadata shard ({exc}); delete it and rerun `albat embed`") from None

    def iter_shards(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield (shard index, ids, vectors) shard by shard: memory stays one shard deep."""
        for index in self.shard_indices():
            ids = self.metadata(index, [ID]).column(ID).to_numpy()
            yield index, ids, self.vectors(index)

    def all_ids(self) -> np.ndarray:
        parts = [self.metadata(i, [ID]).column(ID).to_numpy() for i in self.shard_indices()]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def row_counts(self) -> list[int]:
        return [rec["rows"] for rec in self.done_records()]

    def locate(self, positions: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Group global row positions by shard: (shard index, mask into positions, rows in shard)."""
        positions = np.asarray(positions, dtype=np.int64)
        counts = np.array(self.row_counts(), dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)])
        if len(positions) and (positions.min() < 0 or positions.max() >= starts[-1]):
            raise IndexError(f"row position outside the store's {starts[-1]} rows")
        shard_of = np.searchsorted(starts, positions, side="right") - 1
        indices = self.shard_indices()
        for shard in np.unique(shard_of):
            mask = shard_of == shard
            yield indices[shard], mask, positions[mask] - starts[shard]

    def vectors_at(self, positions: np.ndarray, side: str = "text") -> np.ndarray:
        """Vectors at global row positions, read shard by shard."""
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        for index, mask, rows in self.locate(positions):
            out[mask] = self.vectors(index, side)[rows]
        return out

    def ids_at(self, positions: np.ndarray) -> np.ndarray:
        """Ids at global row positions, read shard by shard."""
        return self.column_at(positions, ID).astype(np.int64, copy=False)

    def column_at(self, positions: np.ndarray, column: str) -> np.ndarray:
        """One numeric metadata column (ids, albat_text_hash) at global row positions, reading only
        the shards that hold them."""
        out: np.ndarray | None = None
        for index, mask, rows in self.locate(positions):
            values = self.metadata(index, [column]).column(column).to_numpy()[rows]
            if out is None:
                out = np.empty(len(positions), dtype=values.dtype)
            out[mask] = values
        return out if out is not None else np.empty(0, dtype=np.int64)

    @property
    def chat_template(self) -> str:
        """How a chat text column was rendered for the encoder (stores.chat); stores before chat rows: lines."""
        return self.info.get("chat_template") or "lines"

    def user_schema(self) -> pa.Schema:
        """The corpus columns the store keeps (text, id, kept columns), albat's own left out."""
        schema = self.metadata(self.shard_indices()[0]).schema
        return pa.schema([f for f in schema if f.name not in RESERVED])

    def texts_for_ids(self, ids: np.ndarray, column: str | None = None) -> list[str]:
        """Texts (default: the embedded text column, a chat column rendered as embedded) of some ids,
        reading only the shards that hold them."""
        return self.texts_at(self.id_positions(ids), column)

    def texts_at(self, positions: np.ndarray, column: str | None = None) -> list[str]:
        """Texts (as `texts_for_ids`) at global row positions, reading only the shards that hold them."""
        column = column or self.info["text_column"]
        out: list[str] = [""] * len(positions)
        for index, mask, rows in self.locate(positions):
            texts = as_texts(self.metadata(index, [column]).column(column).take(rows), self.chat_template)
            for slot, text in zip(np.nonzero(mask)[0], texts):
                out[slot] = text
        return out

    def column_for_ids(self, ids: np.ndarray, column: str) -> np.ndarray:
        """One numeric metadata column (e.g. albat_text_hash) at some ids."""
        return self.column_at(self.id_positions(ids), column)

    # ----- id lookup ----------------------------------------------------------------------
    @property
    def _id_index_paths(self) -> tuple[Path, Path]:
        return self.root / "ids.sorted.npy", self.root / "ids.order.npy"

    def _sorted_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """Every id in ascending order, and the row position of each."""
        ids = self.all_ids()
        order = np.argsort(ids, kind="stable")
        return ids[order], order

    def write_id_index(self) -> np.ndarray:
        """Write the sorted ids and their row positions (memory-mapped at lookup time, so finding a
        few ids in a billion-row store reads a few pages, not every id); returns the sorted ids."""
        sorted_ids, order = self._sorted_ids()
        for path, array in zip(self._id_index_paths, (sorted_ids, order)):
            write_array(array, path)
        return sorted_ids

    def id_index_checksums(self) -> dict[str, str]:
        """SHA-256 of the id lookup files, recorded in store.json when the store completes."""
        return {path.name: sha256_file(path) for path in self._id_index_paths}

    def id_index_damage(self, info: dict[str, Any] | None = None) -> str | None:
        """What is wrong with the id lookup files of a complete store (missing, changed), or None."""
        info = self.read_info() if info is None else info
        recorded = (info or {}).get("ids_sha256")
        for path in self._id_index_paths:
            if not path.exists():
                return f"{path}: missing"
            if isinstance(recorded, dict) and recorded.get(path.name) != sha256_file(path):
                return f"{path}: SHA-256 differs from store.json's (damaged or changed)"
        return None

    def _id_index(self) -> tuple[np.ndarray, np.ndarray]:
        sorted_path, order_path = self._id_index_paths
        if sorted_path.exists() and order_path.exists():
            if not self._ids_checked:
                damage = self.id_index_damage()
                if damage:
                    raise AlbatError(f"{damage}; rerun `albat embed`, which rebuilds it")
                self._ids_checked = True
            try:
                return (np.load(sorted_path, mmap_mode="r", allow_pickle=False),
                        np.load(order_path, mmap_mode="r", allow_pickle=False))
            except (OSError, ValueError) as exc:
                raise AlbatError(f"{sorted_path}: unreadable id lookup ({exc}); rerun `albat embed`, which "
                                 "rebuilds it") from None
        return self._sorted_ids()  # a store still being built: sort in memory

    def id_positions(self, ids: np.ndarray) -> np.ndarray:
        """Global row position of each id; an AlbatError names any id the store lacks."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return np.empty(0, dtype=np.int64)
        sorted_ids, order = self._id_index()
        found = np.searchsorted(sorted_ids, ids)
        missing = found >= len(sorted_ids)
        missing[~missing] = np.asarray(sorted_ids[found[~missing]]) != ids[~missing]
        if missing.any():
            raise AlbatError(f"{self.root}: id {int(ids[missing][0])} is not in the store; the index or "
                             "selection comes from another store, rebuild it")
        return np.asarray(order[found], dtype=np.int64)

    def vectors_for_ids(self, ids: np.ndarray, side: str = "text") -> np.ndarray:
        return self.vectors_at(self.id_positions(np.asarray(ids, dtype=np.int64)), side)


class PairSideView(EmbeddingStore):
    """A store read from its pair side, as if the pair column were its embedded one: `vectors`
    are the pair column's (an image store's caption embeddings) and the view has no pair column of
    its own. Text→text retrieval over an image store reads the store through it, so retrieval and
    every method compare captions with captions; ids, metadata and rows are the store's."""

    SIDE = "pair"

    @property
    def info(self) -> dict[str, Any]:
        info = super().info
        if not info.get("pair_column"):
            raise AlbatError(f"{self.root}: the store has no pair column to read; re-embed with --pair-column "
                             "(an image store has its captions there)")
        return {**info, "pair_column": None, "side": self.SIDE}

    def vectors(self, index: int, side: str = "text") -> np.ndarray:
        if side != "text":
            raise AlbatError(f"{self.root}: read from its pair side, the store has no other side to pair with")
        return self._shard_vectors(index, self.SIDE)


def store_side(root: Path | str, side: str) -> EmbeddingStore:
    """The store at `root` read from `side`: "text" (its embedded column) or "pair" (PairSideView)."""
    if side not in ("text", "pair"):
        raise ValueError(f"side must be text or pair, not {side!r}")
    return PairSideView(root) if side == "pair" else EmbeddingStore(root)
