"""Streaming readers for user corpora: Parquet, JSONL, a saved HF `datasets` directory, plain text.

Every reader yields `CorpusBatch`es of bounded size, in a deterministic order (files sorted by
path, rows in file order), with the columns validated and the source file and row of every
example kept, so any error can name the exact file, row and column.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stores.errors import AlbatError

FORMATS = ("auto", "parquet", "jsonl", "hf", "txt")
_SUFFIX_FORMAT = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl",
                  ".txt": "txt"}


@dataclass(frozen=True)
class CorpusSpec:
    """Where a corpus is and which of its columns matter."""

    paths: Sequence[str]
    text_column: str = "text"
    id_column: str | None = None
    keep_columns: Sequence[str] = field(default_factory=tuple)
    format: str = "auto"
    skip_empty: bool = False
    pair_column: str | None = None  # the query side of (query, document) pairs, embedded too
    max_text_bytes: int = 1 << 20  # a longer text is an error; 0: no limit
    text_flag: str = "--text-column"  # the flags error messages suggest (query's sets have their own)
    skip_flag: str = "--skip-empty"  # "" where empty texts cannot be skipped
    pair_flag: str = "--pair-column"

    @property
    def or_skip(self) -> str:
        return f", or pass {self.skip_flag}" if self.skip_flag else ""

    @property
    def text_columns(self) -> list[tuple[str, str]]:
        """Columns the encoder reads, each with the flag that names it: the text, and the pair side."""
        return [(self.text_column, self.text_flag)] + ([(self.pair_column, self.pair_flag)] if self.pair_column else [])

    @property
    def columns(self) -> list[str]:
        cols = [self.text_column]
        for extra in [self.pair_column, self.id_column, *self.keep_columns]:
            if extra and extra not in cols:
                cols.append(extra)
        return cols


@dataclass
class CorpusBatch:
    table: pa.Table  # the spec's columns, in spec order
    source: str  # file (or directory) the rows come from
    rows: pa.Array  # row number of each example inside `source`


def _is_hf_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()
                              or (path / "dataset_dict.json").exists())


def resolve_files(spec: CorpusSpec) -> list[tuple[Path, str]]:
    """Expand globs and directories into a sorted list of (path, format)."""
    if spec.format not in FORMATS:
        raise AlbatError(f"unknown corpus format '{spec.format}'; use one of {', '.join(FORMATS)}")
    if not spec.paths:
        raise AlbatError("no input given; pass --input PATH (Parquet, JSONL, text or a saved HF dataset)")
    found: list[tuple[Path, str]] = []
    for raw in spec.paths:
        matches = sorted(glob.glob(str(raw))) if any(c in str(raw) for c in "*?[") else [str(raw)]
        if not matches or not Path(matches[0]).exists():
            raise AlbatError(f"{raw}: no such file or directory; check the input path")
        for match in matches:
            path = Path(match)
            if _is_hf_dir(path) or (path.is_dir() and spec.format == "hf"):
                found.append((path, "hf"))
            elif path.is_dir():
                inner = _expand_dir(path, spec.format)
                if not inner:
                    raise AlbatError(f"{path}: directory holds no .parquet, .jsonl or .txt files; point the input "
                                      "at the corpus files")
                found.extend(inner)
            else:
                found.append((path, _format_of(path, spec.format)))
    return found


def _expand_dir(directory: Path, fmt: str, seen: set[str] | None = None) -> list[tuple[Path, str]]:
    """Corpus files below a directory in sorted order; saved HF datasets count as one input,
    hidden files and folders (.ipynb_checkpoints, .cache) are skipped. Symlinks are followed, but
    every real directory and file is read once: a link back up the tree (a cycle) or a second link
    to the same file adds nothing."""
    seen = {os.path.realpath(directory)} if seen is None else seen
    found: list[tuple[Path, str]] = []
    for child in sorted(directory.iterdir()):
        if child.name.startswith("."):
            continue
        real = os.path.realpath(child)
        if real in seen:
            continue
        if child.is_dir():
            seen.add(real)
            found.extend([(child, "hf")] if _is_hf_dir(child) else _expand_dir(child, fmt, seen))
        elif child.suffix in _SUFFIX_FORMAT:
            seen.add(real)
            found.append((child, _format_of(child, fmt)))
    return found


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.suffix not in _SUFFIX_FORMAT:
        raise AlbatError(f"{path}: cannot tell the format from the suffix; pass --format "
                         "parquet|jsonl|txt|hf")
    return _SUFFIX_FORMAT[path.suffix]


def _check_columns(source: str, available: Sequence[str], spec: CorpusSpec) -> None:
    for col in spec.columns:
        if col not in available:
            flag = {spec.text_column: spec.text_flag, spec.pair_column: spec.pair_flag,
                    spec.id_column: "--id-column"}.get(col, "--keep-columns")
            raise AlbatError(f"{source}: no column '{col}' (columns: {', '.join(available) or 'none'}); "
                             f"pass {flag} with one of them")


def _validate_text(table: pa.Table, source: str, rows: pa.Array, column: str, flag: str,
                   spec: CorpusSpec) -> tuple[pa.Table, pa.Array]:
    text = table.column(column)
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        if pa.types.is_null(text.type) and not spec.skip_empty:
            raise AlbatError(f"{source} row {rows[0].as_py()}: column '{column}' is null; "
                             f"drop or fill those rows{spec.or_skip}")
        if not pa.types.is_null(text.type):
            raise AlbatError(f"{source}: column '{column}' holds {text.type}, not text; "
                             f"pass {flag} naming a string column")
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(text.cast(pa.string())), ""), True)
    if pc.any(empty).as_py():
        if not spec.skip_empty:
            bad = pc.index(empty, True).as_py()
            what = "null" if text[bad].as_py() is None else "empty"
            raise AlbatError(f"{source} row {rows[bad].as_py()}: {what} text in column "
                             f"'{column}'; drop or fill that row{spec.or_skip}")
        keep = pc.invert(empty)
        table, rows = table.filter(keep), rows.filter(keep)
    if spec.max_text_bytes and table.num_rows:
        sizes = pc.binary_length(table.column(column).cast(pa.string()))
        too_long = pc.fill_null(pc.greater(sizes, spec.max_text_bytes), False)
        if pc.any(too_long).as_py():
            bad = pc.index(too_long, True).as_py()
            raise AlbatError(f"{source} row {rows[bad].as_py()}: text in column '{column}' is "
                             f"{sizes[bad].as_py():,} bytes, over the {spec.max_text_bytes:,}-byte limit (the "
                             "encoder reads only its start); split or drop that document, or raise "
                             "--max-text-bytes (0: no limit)")
    return table, rows


def _validate(table: pa.Table, source: str, rows: pa.Array, spec: CorpusSpec) -> tuple[pa.Table, pa.Array]:
    """Check text and id values; drop empty texts only when the user asked to."""
    for column, flag in spec.text_columns:
        table, rows = _validate_text(table, source, rows, column, flag, spec)
    if spec.id_column:
        ids = table.column(spec.id_column)
        if not pa.types.is_integer(ids.type) and not pa.types.is_null(ids.type):
            raise AlbatError(f"{source}: id column '{spec.id_column}' holds {ids.type}, not integers; "
                             "pass an integer --id-column or none (ids are then row numbers)")
        if ids.type == pa.uint64() and len(ids) and (pc.max(ids).as_py() or 0) > INT64_MAX:
            bad = pc.index(pc.greater(ids, pa.scalar(INT64_MAX, pa.uint64())), True).as_py()
            raise AlbatError(f"{source} row {rows[bad].as_py()}: id {ids[bad].as_py()} in column '{spec.id_column}' "
                             f"does not fit int64; give ids within [{INT64_MIN}, {INT64_MAX}], or drop --id-column "
                             "to number rows instead")
        if ids.null_count:
            bad = pc.index(pc.is_null(ids), True).as_py()
            raise AlbatError(f"{source} row {rows[bad].as_py()}: null id in column "
                             f"'{spec.id_column}'; give every row an id")
    return table, rows


def _parquet_batches(path: Path, spec: CorpusSpec, batch_rows: int) -> Iterator[tuple[pa.Table, int]]:
    try:
        handle = pq.ParquetFile(path)
        _check_columns(str(path), handle.schema_arrow.names, spec)
        start = 0
        for batch in handle.iter_batches(batch_size=batch_rows, columns=spec.columns):
            yield pa.Table.from_batches([batch]).select(spec.columns), start
            start += batch.num_rows
    except AlbatError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise AlbatError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]}); "
                         "re-export or remove it") from None


def _jsonl_batches(path: Path, spec: CorpusSpec, batch_rows: int) -> Iterator[tuple[pa.Table, int]]:
    rows: list[dict] = []
    start = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise AlbatError(f"{path} line {lineno}: not valid UTF-8; re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AlbatError(f"{path} line {lineno}: invalid JSON ({exc.msg}); fix or remove the line") from None
            if not isinstance(record, dict):
                raise AlbatError(f"{path} line {lineno}: expected a JSON object per line; write one "
                                  "{\"text\": ...} object on each line")
            if not rows and start == 0:
                _check_columns(f"{path} line {lineno}", list(record), spec)
            if "\\u" in line:  # only an escape can smuggle in a lone UTF-16 surrogate
                _check_unicode(record, spec, f"{path} line {lineno}")
            if spec.id_column and isinstance(record.get(spec.id_column), int) \
                    and not INT64_MIN <= record[spec.id_column] <= INT64_MAX:
                raise AlbatError(f"{path} line {lineno}: id {record[spec.id_column]} in column '{spec.id_column}' does "
                                 f"not fit int64; give ids within [{INT64_MIN}, {INT64_MAX}], or drop --id-column "
                                 "to number rows instead")
            rows.append({c: record.get(c) for c in spec.columns})
            if len(rows) == batch_rows:
                yield _table_from_rows(rows, spec, path), start
                start += len(rows)
                rows = []
    if rows:
        yield _table_from_rows(rows, spec, path), start


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _check_unicode(record: dict, spec: CorpusSpec, where: str) -> None:
    """Refuse a lone UTF-16 surrogate (JSON "\\ud800"): valid JSON, but not Unicode text."""
    for column in spec.columns:
        value = record.get(column)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise AlbatError(f"{where}: column '{column}' holds a lone UTF-16 surrogate "
                                 f"(\\u{ord(value[exc.start]):04x}), which is not valid Unicode text; fix that escape "
                                 "or remove the line") from None


def _table_from_rows(rows: list[dict], spec: CorpusSpec, path: Path) -> pa.Table:
    try:
        return pa.Table.from_pylist(rows).select(spec.columns)
    except (pa.ArrowException, OverflowError) as exc:
        raise AlbatError(f"{path}: inconsistent value types across rows ({exc}); make each column one type") from None


def _txt_batches(path: Path, spec: CorpusSpec, batch_rows: int) -> Iterator[tuple[pa.Table, int]]:
    if spec.columns != [spec.text_column]:
        raise AlbatError(f"{path}: a text file has one example a line and no other columns; "
                         "drop --id-column/--keep-columns or use Parquet/JSONL")
    lines: list[str] = []
    start = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                lines.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError:
                raise AlbatError(f"{path} line {lineno}: not valid UTF-8; re-encode the file as UTF-8") from None
            if len(lines) == batch_rows:
                yield pa.table({spec.text_column: lines}), start
                start += len(lines)
                lines = []
    if lines:
        yield pa.table({spec.text_column: lines}), start


def _hf_batches(path: Path, spec: CorpusSpec, batch_rows: int) -> Iterator[tuple[pa.Table, int]]:
    import datasets  # heavy: imported only for HF inputs

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many types for a bad directory
        raise AlbatError(f"{path}: not a dataset saved with save_to_disk ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        raise AlbatError(f"{path}: holds splits {', '.join(loaded)}; pass {path}/SPLIT for one of them")
    _check_columns(str(path), loaded.column_names, spec)
    start = 0
    for table in loaded.select_columns(spec.columns).with_format("arrow").iter(batch_size=batch_rows):
        yield table.select(spec.columns), start
        start += table.num_rows


_READERS = {"parquet": _parquet_batches, "jsonl": _jsonl_batches, "txt": _txt_batches, "hf": _hf_batches}


def iter_batches(spec: CorpusSpec, batch_rows: int = 4096) -> Iterator[CorpusBatch]:
    """Yield validated batches of at most `batch_rows` rows, files in sorted order."""
    for path, fmt in resolve_files(spec):
        yield from iter_file(spec, path, fmt, batch_rows)


def iter_file(spec: CorpusSpec, path: Path, fmt: str, batch_rows: int = 4096, start: int = 0,
              stop: int | None = None) -> Iterator[CorpusBatch]:
    """Validated batches of one input file; with `start`/`stop`, only its valid rows [start, stop)
    (counted as `iter_batches` yields them), and reading ends once `stop` is reached."""
    seen, any_rows = 0, False
    for table, first in _READERS[fmt](path, spec, batch_rows):
        rows = pa.array(range(first, first + table.num_rows), type=pa.int64())
        table, rows = _validate(table, str(path), rows, spec)
        if table.num_rows:
            any_rows = True
            lo, hi = max(start - seen, 0), table.num_rows if stop is None else min(stop - seen, table.num_rows)
            seen += table.num_rows
            if lo < hi:
                yield CorpusBatch(table=table.slice(lo, hi - lo), source=str(path), rows=rows.slice(lo, hi - lo))
            if stop is not None and seen >= stop:
                return
    if not any_rows:
        _empty_file(path, spec)


def _empty_file(path: Path, spec: CorpusSpec) -> None:
    if not spec.skip_empty:
        raise AlbatError(f"{path}: holds no rows; add rows or remove the file from the input")


class FileCount(NamedTuple):
    source: str  # the file (or HF directory) as the readers name it
    format: str
    rows: int  # valid rows (after --skip-empty)


def scan_corpus(spec: CorpusSpec, batch_rows: int = 65_536) -> list[FileCount]:
    """Read the whole corpus once and raise what streaming would raise part-way (a bad row, a
    non-UTF-8 line, a truncated file, no rows) and any duplicated id, so a stage can refuse bad input
    before it writes anything. Costs one read pass; returns each file's valid row count, in stream
    order (`pipeline.shards.plan_shards` plans the shards from them)."""
    counts: list[FileCount] = []
    ids: list[np.ndarray] = []
    where: list[tuple[str, np.ndarray]] = []  # (source, row numbers) of each batch, for the message
    for path, fmt in resolve_files(spec):
        rows = 0
        for batch in iter_file(spec, path, fmt, batch_rows):
            rows += batch.table.num_rows
            if spec.id_column:
                ids.append(batch.table.column(spec.id_column).cast(pa.int64()).to_numpy())
                where.append((batch.source, batch.rows.to_numpy()))
        counts.append(FileCount(str(path), fmt, rows))
    if sum(c.rows for c in counts) == 0:
        raise AlbatError(f"{', '.join(map(str, spec.paths))}: the corpus holds no rows; check the input")
    if ids:
        _check_unique(np.concatenate(ids), where, spec)
    return counts


def _check_unique(ids: np.ndarray, where: list[tuple[str, np.ndarray]], spec: CorpusSpec) -> None:
    order = np.argsort(ids, kind="stable")
    repeated = np.nonzero(ids[order][1:] == ids[order][:-1])[0]
    if not len(repeated):
        return
    dup = int(ids[order][repeated[0]])
    positions = np.nonzero(ids == dup)[0]
    starts = np.cumsum([0] + [len(rows) for _, rows in where])
    places = []
    for pos in positions[:2]:
        batch = int(np.searchsorted(starts, pos, side="right")) - 1
        source, rows = where[batch]
        places.append(f"{source} row {int(rows[pos - starts[batch]])}")
    raise AlbatError(f"id {dup} appears {len(positions)} times in column '{spec.id_column}' ({' and '.join(places)}); "
                     "ids must be unique: fix them, or drop --id-column to number rows instead")


def count_rows(spec: CorpusSpec) -> int | None:
    """Row count for progress ETAs; cheap for Parquet and HF (metadata), a line scan for text."""
    total = 0
    for path, fmt in resolve_files(spec):
        try:
            if fmt == "parquet":
                total += pq.ParquetFile(path).metadata.num_rows
            elif fmt == "hf":
                total += _hf_rows(path)
            else:
                with open(path, "rb") as fh:
                    total += sum(1 for line in fh if line.strip())
        except (pa.ArrowException, OSError):
            return None  # the reader reports the real error with its file name
    return total


def _hf_rows(path: Path) -> int:
    import datasets

    try:
        return len(datasets.load_from_disk(str(path)))
    except Exception:
        return 0


def read_all(spec: CorpusSpec, limit_rows: int | None = None) -> tuple[pa.Table, list[str], list[int]]:
    """Read a small corpus (adaptation or exclusion set) whole, with the source and row of each row."""
    tables, sources, rows = [], [], []
    for batch in iter_batches(spec):
        tables.append(batch.table)
        sources.extend([batch.source] * batch.table.num_rows)
        rows.extend(batch.rows.to_pylist())
        if limit_rows is not None and len(rows) > limit_rows:
            raise AlbatError(f"{spec.paths[0]}: more than {limit_rows} examples; this input is read whole, "
                             "so pass a smaller set")
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in spec.columns}), [], []
    return pa.concat_tables(tables, promote_options="permissive"), sources, rows
