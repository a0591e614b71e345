"""Streaming readers for user corpora: Parquet, JSONL (plain, .gz, .zst), CSV/TSV (plain, .gz, .zst),
a saved HF `datasets` directory, a Hub dataset (`hub:NAME`), plain text; local or at any URL fsspec
opens (`stores.sources`).

Every reader yields `CorpusBatch`es of bounded size, in a deterministic order (files sorted by
path, rows in file order), with the columns validated and the source file and row of every
example kept, so any error can name the exact file, row and column. A text column may be a chat
column (a list of {role, content} structs, `stores.chat`): its rendering is checked and embedded,
the structure itself is what the batch carries.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from albat.stores import chat
from albat.stores.errors import AlbatError
from albat.stores.sources import (FORMATS, HF_MARKERS, HUB, expand_local, expand_url, format_of, is_corpus_file,
                                  is_remote, is_url, load_hub, open_bytes, open_parquet, signature,
                                  suffixes)


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
    chat_template: str = "lines"  # how a chat text column is rendered (stores.chat.TEMPLATES)
    all_columns: bool = False  # carry every column of the input, not only `columns` (adaptation sets)

    def select(self, table: pa.Table) -> pa.Table:
        """A batch's columns as the spec wants them: `columns` in spec order, then (all_columns) every
        other column in the input's order."""
        rest = [c for c in table.column_names if c not in self.columns] if self.all_columns else []
        return table.select(self.columns + rest)

    def texts(self, table: pa.Table, column: str | None = None) -> list[str]:
        """The texts the encoder reads from a column of a batch (the text column by default): the
        strings themselves, or the rendering of a chat column."""
        return _as_text(table.column(column or self.text_column), self.chat_template).to_pylist()

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
    return path.is_dir() and any((path / name).exists() for name in HF_MARKERS)


def resolve_files(spec: CorpusSpec) -> list[tuple[str, str]]:
    """Expand globs, directories and URLs into a sorted list of (source, format)."""
    if spec.format not in FORMATS:
        raise AlbatError(f"unknown corpus format '{spec.format}'; use one of {', '.join(FORMATS)}")
    if spec.chat_template not in chat.TEMPLATES:
        raise AlbatError(f"unknown chat template '{spec.chat_template}'; use one of {', '.join(chat.TEMPLATES)}")
    if not spec.paths:
        raise AlbatError("no input given; pass --input PATH (Parquet, JSONL, CSV, text, a saved HF dataset, a URL "
                         "or hub:NAME)")
    found: list[tuple[str, str]] = []
    for raw in map(str, spec.paths):
        raw = raw[len("file://"):] if raw.startswith("file://") else raw
        if raw.startswith(HUB):
            found.append((raw, "hub"))
            continue
        if is_url(raw):
            found.extend(expand_url(raw, spec.format))
            continue
        for match in expand_local(raw):
            path = Path(match)
            if _is_hf_dir(path) or (path.is_dir() and spec.format == "hf"):
                found.append((str(path), "hf"))
            elif path.is_dir():
                inner = _expand_dir(path, spec.format)
                if not inner:
                    raise AlbatError(f"{path}: directory holds no .parquet, .jsonl, .csv, .tsv or .txt files (plain, "
                                     ".gz or .zst); point the input at the corpus files")
                found.extend(inner)
            else:
                found.append((str(path), format_of(str(path), spec.format)))
    return found


def _expand_dir(directory: Path, fmt: str, seen: set[str] | None = None) -> list[tuple[str, str]]:
    """Corpus files below a directory in sorted order; saved HF datasets count as one input,
    hidden files and folders (.ipynb_checkpoints, .cache) are skipped. Symlinks are followed, but
    every real directory and file is read once: a link back up the tree (a cycle) or a second link
    to the same file adds nothing."""
    seen = {os.path.realpath(directory)} if seen is None else seen
    found: list[tuple[str, str]] = []
    for child in sorted(directory.iterdir()):
        if child.name.startswith("."):
            continue
        real = os.path.realpath(child)
        if real in seen:
            continue
        if child.is_dir():
            seen.add(real)
            found.extend([(str(child), "hf")] if _is_hf_dir(child) else _expand_dir(child, fmt, seen))
        elif is_corpus_file(child.name):
            seen.add(real)
            found.append((str(child), format_of(str(child), fmt)))
    return found


def _check_columns(source: str, available: Sequence[str], spec: CorpusSpec) -> None:
    for col in spec.columns:
        if col not in available:
            flag = {spec.text_column: spec.text_flag, spec.pair_column: spec.pair_flag,
                    spec.id_column: "--id-column"}.get(col, "--keep-columns")
            raise AlbatError(f"{source}: no column '{col}' (columns: {', '.join(available) or 'none'}); "
                             f"pass {flag} with one of them")


def _as_text(column: pa.ChunkedArray | pa.Array, template: str) -> pa.Array | pa.ChunkedArray:
    """A text column as strings: itself, or the rendering of a chat column (`stores.chat`)."""
    return chat.render(column, template) if chat.is_chat_type(column.type) else column.cast(pa.string())


def _validate_text(table: pa.Table, source: str, rows: pa.Array, column: str, flag: str,
                   spec: CorpusSpec) -> tuple[pa.Table, pa.Array]:
    text = table.column(column)
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type) or chat.is_chat_type(text.type)):
        if pa.types.is_null(text.type) and not spec.skip_empty:
            raise AlbatError(f"{source} row {rows[0].as_py()}: column '{column}' is null; "
                             f"drop or fill those rows{spec.or_skip}")
        if not pa.types.is_null(text.type):
            raise AlbatError(f"{source}: column '{column}' holds {text.type}, not text; pass {flag} naming a string "
                             "column or a chat column (a list of {role, content} structs)")
    text = _as_text(text, spec.chat_template)
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(text), ""), True)
    if pc.any(empty).as_py():
        if not spec.skip_empty:
            bad = pc.index(empty, True).as_py()
            what = "null" if text[bad].as_py() is None else "empty"
            raise AlbatError(f"{source} row {rows[bad].as_py()}: {what} text in column "
                             f"'{column}'; drop or fill that row{spec.or_skip}")
        keep = pc.invert(empty)
        table, rows, text = table.filter(keep), rows.filter(keep), text.filter(keep)
    if spec.max_text_bytes and table.num_rows:
        sizes = pc.binary_length(text)
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


def _parquet_batches(source: str, spec: CorpusSpec, batch_rows: int) -> Iterator[tuple[pa.Table, int]]:
    try:
        with open_parquet(source) as handle:
            _check_columns(source, handle.schema_arrow.names, spec)
            start = 0
            for batch in handle.iter_batches(batch_size=batch_rows, columns=None if spec.all_columns else spec.columns):
                yield spec.select(pa.Table.from_batches([batch])), start
                start += batch.num_rows
    except AlbatError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise AlbatError(f"{source}: not a readable Parquet file ({str(exc).splitlines()[0]}); "
                         "re-export or remove it") from None


def _lines(source: str) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of a file, decompressed as it is read; a truncated or corrupt
    compressed stream is one error naming the line it broke at."""
    lineno = 0
    try:
        with open_bytes(source) as fh:
            for lineno, raw in enumerate(fh, start=1):
                yield lineno, raw
    except (OSError, EOFError, pa.ArrowException) as exc:
        raise AlbatError(f"{source} line {lineno + 1}: cannot read on ({str(exc).splitlines()[0]}); the file is "
                         "truncated or corrupt: re-download or re-compress it") from None


def json_line(source: str | Path, lineno: int, line: str) -> Any:
    """One JSON Lines record, or the one-line error naming the file and line."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise AlbatError(f"{source} line {lineno}: invalid JSON ({exc.msg}); fix or remove the line") from None


def _jsonl_batches(source: str, spec: CorpusSpec, batch_rows: int) -> Iterator[tuple[pa.Table, int]]:
    rows: list[dict] = []
    start = 0
    for lineno, raw in _lines(source):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise AlbatError(f"{source} line {lineno}: not valid UTF-8; re-encode the file as UTF-8") from None
        if not line.strip():
            continue
        record = json_line(source, lineno, line)
        if not isinstance(record, dict):
            raise AlbatError(f"{source} line {lineno}: expected a JSON object per line; write one "
                             "{\"text\": ...} object on each line")
        if not rows and start == 0:
            _check_columns(f"{source} line {lineno}", list(record), spec)
        if "\\u" in line:  # only an escape can smuggle in a lone UTF-16 surrogate
            _check_unicode(record, spec, f"{source} line {lineno}")
        if spec.id_column and isinstance(record.get(spec.id_column), int) \
                and not INT64_MIN <= record[spec.id_column] <= INT64_MAX:
            raise AlbatError(f"{source} line {lineno}: id {record[spec.id_column]} in column '{spec.id_column}' does "
                             f"not fit int64; give ids within [{INT64_MIN}, {INT64_MAX}], or drop --id-column "
                             "to number rows instead")
        rows.append(record if spec.all_columns else {c: record.get(c) for c in spec.columns})
        if len(rows) == batch_rows:
            yield _table_from_rows(rows, spec, source), start
            start += len(rows)
            rows = []
    if rows:
        yield _table_from_rows(rows, spec, source), start


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


def _table_from_rows(rows: list[dict], spec: CorpusSpec, source: str) -> pa.Table:
    if spec.all_columns:  # every key any row of the batch has, in first-seen order
        names = list(dict.fromkeys(k for row in rows for k in row))
        rows = [{k: row.get(k) for k in names} for row in rows]
    try:
        return spec.select(pa.Table.from_pylist(rows))
    except (pa.ArrowException, OverflowError) as exc:
        raise AlbatError(f"{source}: inconsistent value types across rows ({exc}); make each column one type") from None


def _csv_batches(source: str, spec: CorpusSpec, batch_rows: int, delimiter: str = ",") -> Iterator[tuple[pa.Table, int]]:
    """CSV (TSV: `delimiter` tab) with a header row, streamed block by block (pyarrow.csv): quoted
    values may span lines; text columns are read as strings, the others typed by pyarrow's inference
    on the first block. Row numbers count data rows from 0, the header excluded."""
    import pyarrow.csv as pcsv

    bad: list[str] = []

    def invalid(row) -> str:
        where = f" line {row.number}" if row.number is not None else ""
        bad.append(f"{source}{where}: expected {row.expected_columns} columns, found {row.actual_columns} "
                   f"(row starts {row.text[:60]!r}); fix that row's quoting or delimiters")
        return "error"

    start, last = 0, None
    kind = "TSV" if delimiter == "\t" else "CSV"
    try:
        with open_bytes(source) as raw:
            fh = _QuoteCount(raw)
            try:
                reader = pcsv.open_csv(
                    fh, read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                    parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True,
                                                    invalid_row_handler=invalid),
                    convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c, _ in spec.text_columns}))
            except pa.ArrowInvalid as exc:
                if "Empty CSV file" in str(exc):
                    return
                raise
            _check_columns(source, reader.schema.names, spec)
            for batch in reader:
                table = spec.select(pa.Table.from_batches([batch]))
                for offset in range(0, table.num_rows, batch_rows):
                    yield table.slice(offset, batch_rows), start + offset
                start += table.num_rows
                last = table.slice(table.num_rows - 1) if table.num_rows else last
        if fh.quotes % 2 and last is not None and any(
                isinstance(v, str) and ("\n" in v or "\r" in v) for v in last.to_pylist()[0].values()):
            raise AlbatError(f"{source} row {start - 1}: a quote opened in the last row is never closed, so the rest of "
                             f"the file was read into one value; close that quote (write \"\" for a quote inside a "
                             "quoted value)")
    except AlbatError:
        raise
    except (pa.ArrowException, OSError, EOFError) as exc:
        if bad:
            raise AlbatError(bad[0]) from None
        raise AlbatError(f"{source}: not a readable {kind} file after data row {start} ({str(exc).splitlines()[0]}); "
                         "fix the quoting, delimiter or column types there, or re-export the file") from None


# pyarrow.csv parses blocks of this size and reads several ahead: the reader's memory is a few
# megabytes whatever the file's size (tests/test_readers.py measures it).
CSV_BLOCK_BYTES = 256 << 10


class _QuoteCount(io.RawIOBase):
    """A reader that counts the quote characters passing through (an odd count: an unclosed quote)."""

    def __init__(self, inner) -> None:
        self.inner, self.quotes = inner, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.inner.read(len(buffer))
        buffer[:len(data)] = data
        self.quotes += data.count(b'"')
        return len(data)


def _tsv_batches(source: str, spec: CorpusSpec, batch_rows: int) -> Iterator[tuple[pa.Table, int]]:
    return _csv_batches(source, spec, batch_rows, delimiter="\t")


def _txt_batches(source: str, spec: CorpusSpec, batch_rows: int) -> Iterator[tuple[pa.Table, int]]:
    if spec.columns != [spec.text_column]:
        raise AlbatError(f"{source}: a text file has one example a line and no other columns; "
                         "drop --id-column/--keep-columns or use Parquet/JSONL/CSV")
    lines: list[str] = []
    start = 0
    for lineno, raw in _lines(source):
        try:
            lines.append(raw.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError:
            raise AlbatError(f"{source} line {lineno}: not valid UTF-8; re-encode the file as UTF-8") from None
        if len(lines) == batch_rows:
            yield pa.table({spec.text_column: lines}), start
            start += len(lines)
            lines = []
    if lines:
        yield pa.table({spec.text_column: lines}), start


def _dataset_batches(loaded, source: str, spec: CorpusSpec, batch_rows: int) -> Iterator[tuple[pa.Table, int]]:
    """Arrow batches of a `datasets` Dataset or IterableDataset (streamed from the Hub)."""
    names = loaded.column_names if loaded.column_names is not None else list(loaded.features or [])
    _check_columns(source, names, spec)
    start = 0
    try:
        chosen = loaded if spec.all_columns else loaded.select_columns(spec.columns)
        for table in chosen.with_format("arrow").iter(batch_size=batch_rows):
            yield spec.select(table), start
            start += table.num_rows
    except AlbatError:
        raise
    except Exception as exc:  # noqa: BLE001 - a stream cut off mid-way raises whatever its transport raises
        raise AlbatError(f"{source}: reading stopped after row {start} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); rerun, or save the dataset locally "
                         "with save_to_disk and pass that folder") from None


def _hf_batches(source: str, spec: CorpusSpec, batch_rows: int) -> Iterator[tuple[pa.Table, int]]:
    import datasets  # heavy: imported only for HF inputs

    try:
        loaded = datasets.load_from_disk(source)
    except Exception as exc:  # datasets raises many types for a bad directory
        raise AlbatError(f"{source}: not a dataset saved with save_to_disk ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        raise AlbatError(f"{source}: holds splits {', '.join(loaded)}; pass {source}/SPLIT for one of them")
    yield from _dataset_batches(loaded, source, spec, batch_rows)


def _hub_batches(source: str, spec: CorpusSpec, batch_rows: int) -> Iterator[tuple[pa.Table, int]]:
    yield from _dataset_batches(load_hub(source), source, spec, batch_rows)


_READERS = {"parquet": _parquet_batches, "jsonl": _jsonl_batches, "csv": _csv_batches, "tsv": _tsv_batches,
            "txt": _txt_batches, "hf": _hf_batches, "hub": _hub_batches}


def iter_batches(spec: CorpusSpec, batch_rows: int = 4096) -> Iterator[CorpusBatch]:
    """Yield validated batches of at most `batch_rows` rows, files in sorted order."""
    for source, fmt in resolve_files(spec):
        yield from iter_file(spec, source, fmt, batch_rows)


def iter_file(spec: CorpusSpec, path: str | Path, fmt: str, batch_rows: int = 4096, start: int = 0,
              stop: int | None = None) -> Iterator[CorpusBatch]:
    """Validated batches of one input (a source of `resolve_files`); with `start`/`stop`, only its
    valid rows [start, stop) (counted as `iter_batches` yields them), and reading ends once `stop`
    is reached."""
    source = str(path)
    seen, any_rows = 0, False
    for table, first in _READERS[fmt](source, spec, batch_rows):
        rows = pa.array(range(first, first + table.num_rows), type=pa.int64())
        table, rows = _validate(table, source, rows, spec)
        if table.num_rows:
            any_rows = True
            lo, hi = max(start - seen, 0), table.num_rows if stop is None else min(stop - seen, table.num_rows)
            seen += table.num_rows
            if lo < hi:
                yield CorpusBatch(table=table.slice(lo, hi - lo), source=source, rows=rows.slice(lo, hi - lo))
            if stop is not None and seen >= stop:
                return
    if not any_rows:
        _empty_file(source, spec)


def _empty_file(source: str, spec: CorpusSpec) -> None:
    if not spec.skip_empty:
        raise AlbatError(f"{source}: holds no rows; add rows or remove the file from the input")


def input_signature(spec: CorpusSpec) -> list[list[Any]]:
    """Path, size and mtime of every input file (a URL: its size and stamp; `stores.sources.signature`):
    a changed corpus must not resume an old store, nor a changed adaptation set an old query."""
    return [entry for source, _ in resolve_files(spec) for entry in signature(source)]


class FileCount(NamedTuple):
    source: str  # the file (or HF directory) as the readers name it
    format: str
    rows: int  # valid rows (after --skip-empty)


def scan_corpus(spec: CorpusSpec, batch_rows: int = 65_536,
                on_rows: Callable[[int], object] = lambda _: None) -> list[FileCount]:
    """Read the whole corpus once and raise what streaming would raise part-way (a bad row, a
    non-UTF-8 line, a truncated file, no rows) and any duplicated id, so a stage can refuse bad input
    before it writes anything. Costs one read pass; returns each file's valid row count, in stream
    order (`pipeline.shards.plan_shards` plans the shards from them). `on_rows(n)`: n more rows read
    (a progress bar)."""
    counts: list[FileCount] = []
    ids: list[np.ndarray] = []
    where: list[tuple[str, np.ndarray]] = []  # (source, row numbers) of each batch, for the message
    for path, fmt in resolve_files(spec):
        rows = 0
        for batch in iter_file(spec, path, fmt, batch_rows):
            rows += batch.table.num_rows
            on_rows(batch.table.num_rows)
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
    """Row count for progress ETAs; cheap for Parquet and HF (metadata), a line scan for local
    uncompressed JSONL and text; None where only a full parse would tell (CSV, compressed, Hub)."""
    total = 0
    for source, fmt in resolve_files(spec):
        try:
            if fmt == "parquet":
                with open_parquet(source) as handle:
                    total += handle.metadata.num_rows
            elif fmt == "hf":
                total += _hf_rows(source)
            elif fmt in ("jsonl", "txt") and not is_remote(source) and suffixes(source)[1] is None:
                with open(source, "rb") as fh:
                    total += sum(1 for line in fh if line.strip())
            else:
                return None
        except (pa.ArrowException, OSError):
            return None  # the reader reports the real error with its file name
    return total


def _hf_rows(source: str) -> int:
    import datasets

    try:
        return len(datasets.load_from_disk(source))
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
