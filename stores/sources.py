"""Where corpus inputs live and how their bytes are opened: local paths, fsspec URLs, HF Hub names.

A *source* is one string naming one input the readers read whole: a local file or saved HF dataset
folder (its path as given or found), a remote file (`memory://...`, `s3://...`, `https://...`,
`hf://datasets/...`: any URL fsspec opens; the matching filesystem package must be installed), or
a Hub dataset (`hub:NAME[@REVISION][:SPLIT]`, read through `datasets`). `expand` turns one input
argument (a path, glob, folder or URL) into sorted (source, format) pairs; `open_bytes` opens a
file source for reading, decompressing `.gz` and `.zst` on the fly (pyarrow's codecs, streamed).
"""
from __future__ import annotations

import contextlib
import glob
import io
import os
import re
from pathlib import Path
from typing import IO, Iterator

import pyarrow as pa

from albat.stores.errors import AlbatError

FORMATS = ("auto", "parquet", "jsonl", "csv", "tsv", "hf", "txt")
SUFFIX_FORMAT = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
                 ".csv": "csv", ".tsv": "tsv", ".txt": "txt"}
COMPRESSION = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}
HUB = "hub:"
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")  # a save_to_disk folder
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Formats whose lines are not examples: reading one as --format txt would embed its header or markup.
_STRUCTURED = {"parquet", "jsonl", "csv", "tsv"}


def has_scheme(raw: str) -> bool:
    """`scheme://...`: a URL, file:// included."""
    return bool(_URL.match(raw))


def is_url(raw: str) -> bool:
    return has_scheme(raw) and not raw.startswith("file://")


def is_remote(source: str) -> bool:
    """A source not on the local file system (a URL or a Hub name): no stat, no symlinks."""
    return is_url(source) or source.startswith(HUB)


def suffixes(name: str) -> tuple[str, str | None]:
    """(format suffix, compression) of a file name: 'a.jsonl.gz' -> ('.jsonl', 'gzip')."""
    base = name.rsplit("/", 1)[-1].lower()
    stem, dot, last = base.rpartition(".")
    if dot and "." + last in COMPRESSION:
        inner = stem.rpartition(".")
        return ("." + inner[2] if inner[1] else ""), COMPRESSION["." + last]
    return ("." + last if dot else ""), None


def is_text_file(path: str) -> bool:
    """A JSONL, CSV, TSV or text file (compressed or not): rows of text, no images in it."""
    return SUFFIX_FORMAT.get(suffixes(str(path))[0]) in ("jsonl", "csv", "tsv", "txt")


def is_corpus_file(name: str) -> bool:
    return suffixes(name)[0] in SUFFIX_FORMAT


def format_of(source: str, fmt: str) -> str:
    """The reader of a file: `fmt` when given, else the one its suffix names (compression aside).
    `--format txt` on a .csv/.tsv/.jsonl/.parquet file is refused: it would silently embed a header
    row (or markup) as if it were an example."""
    suffix, compression = suffixes(source)
    named = SUFFIX_FORMAT.get(suffix)
    if fmt == "auto":
        if named is None:
            raise AlbatError(f"{source}: cannot tell the format from the suffix; pass --format "
                             "parquet|jsonl|csv|tsv|txt|hf")
        fmt = named
    elif fmt == "txt" and named in _STRUCTURED:
        raise AlbatError(f"{source}: a {suffix} file read as --format txt would embed its header and markup as "
                         f"examples; pass --format {named} (or auto), or rename the file to .txt if every line "
                         "really is one example")
    if compression and fmt in ("parquet", "hf"):
        raise AlbatError(f"{source}: {fmt} files are compressed inside; decompress the file (only JSONL, CSV, TSV "
                         "and text are read through .gz/.zst)")
    return fmt


# ----- expanding input arguments ------------------------------------------------------------------
def url_filesystem(raw: str, label: str | None = None):
    """(fsspec file system, path inside it) for a URL; one line naming `label` (default: the URL)
    and the package to install when the scheme has no file system here."""
    import fsspec  # only for URLs

    try:
        return fsspec.core.url_to_fs(raw)
    except (ImportError, ValueError) as exc:
        scheme = raw.split("://", 1)[0]
        raise AlbatError(f"{label or raw}: no file system for '{scheme}://' here ({str(exc).splitlines()[0]}); install the "
                         "fsspec package for it (s3fs, gcsfs, adlfs, aiohttp for http) with "
                         "pip install -c constraints.txt") from None


def expand_url(raw: str, fmt: str) -> list[tuple[str, str]]:
    """A URL (file, glob or folder) as sorted (source, format) pairs; hidden names below a folder skipped."""
    if raw.startswith("hf://") and hub_offline():
        raise AlbatError(f"{raw}: the Hugging Face Hub is off (HF_HUB_OFFLINE=1); download those files on a machine "
                         "that reaches the hub and pass their local paths")
    fs, root = url_filesystem(raw)
    try:
        if any(c in root for c in "*?["):
            names = sorted(fs.glob(root))
        elif fs.isdir(root):
            if fmt == "hf" or any(fs.exists(f"{root.rstrip('/')}/{name}") for name in HF_MARKERS):
                return [(raw, "hf")]
            below = [p for p in fs.find(root) if not any(part.startswith(".") for part in p[len(root):].split("/"))]
            names = sorted(p for p in below if is_corpus_file(p))
            if not names:
                raise AlbatError(f"{raw}: folder holds no .parquet, .jsonl, .csv, .tsv or .txt files; point the "
                                 "input at the corpus files")
        elif fs.exists(root):
            return [(raw, format_of(raw, fmt))]
        else:
            names = []
    except AlbatError:
        raise
    except Exception as exc:  # each fsspec backend raises its own types (network, permissions)
        raise AlbatError(f"{raw}: cannot list it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                         "check the URL and your access to it") from None
    if not names:
        raise AlbatError(f"{raw}: no such file or folder; check the input URL")
    return [(fs.unstrip_protocol(name), format_of(name, fmt)) for name in names if not fs.isdir(name)]


def expand_local(raw: str) -> list[str]:
    matches = sorted(glob.glob(raw)) if any(c in raw for c in "*?[") else [raw]
    if not matches or not Path(matches[0]).exists():
        raise AlbatError(f"{raw}: no such file or directory; check the input path")
    return matches


# ----- opening ------------------------------------------------------------------------------------
@contextlib.contextmanager
def open_bytes(source: str) -> Iterator[IO[bytes]]:
    """A buffered binary reader of the source's (decompressed) bytes, read in bounded chunks."""
    compression = suffixes(source)[1]
    if is_url(source):
        import fsspec

        handle: IO[bytes] = fsspec.open(source, "rb").open()
    else:
        handle = open(source, "rb")
    try:
        if compression is None:
            yield handle
        else:
            stream = pa.CompressedInputStream(pa.PythonFile(handle, mode="r"), compression)
            yield io.BufferedReader(stream, buffer_size=1 << 20)
    finally:
        handle.close()


@contextlib.contextmanager
def open_parquet(source: str) -> Iterator["pq.ParquetFile"]:
    """A `pyarrow.parquet.ParquetFile` on the local path, or on an fsspec file closed afterwards.
    Without pre-buffering: pyarrow's default buffers row groups ahead, memory growing with the file
    (21 MB for a 135 MB file of 100-row groups, against 2.7 MB without; tests/test_readers.py)."""
    import pyarrow.parquet as pq

    if not is_url(source):
        yield pq.ParquetFile(source, pre_buffer=False)
        return
    import fsspec

    with fsspec.open(source, "rb") as handle:
        yield pq.ParquetFile(handle, pre_buffer=False)


def signature(source: str) -> list:
    """What a fingerprint records of an input so a changed input is noticed: path, size and mtime of
    every local file (a folder: every file below it); a URL's size and modification stamp (or ETag)
    where its file system reports them; a Hub name as written (pin @REVISION to make it stable)."""
    if source.startswith(HUB):
        return [[source]]
    if is_url(source):
        fs, root = url_filesystem(source)
        try:
            info = fs.info(root)
        except Exception:  # noqa: BLE001 - the readers report an unreadable source with its name
            return [[source]]
        stamp = next((str(info[k]) for k in ("mtime", "LastModified", "last_modified", "ETag", "etag", "created")
                      if info.get(k) is not None), "")
        return [[source, info.get("size"), stamp]]
    path = Path(source)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def local_size(source: str) -> int | None:
    return None if is_remote(source) else os.path.getsize(source)


# ----- the Hugging Face Hub -----------------------------------------------------------------------
def parse_hub(source: str) -> tuple[str, str | None, str]:
    """'hub:owner/name@rev:split' -> (owner/name, rev, split); split defaults to train."""
    spec = source[len(HUB):]
    name, _, split = spec.partition(":")
    name, _, revision = name.partition("@")
    if not name:
        raise AlbatError(f"{source}: no dataset name; write hub:OWNER/NAME[@REVISION][:SPLIT]")
    return name, revision or None, split or "train"


def hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_hub(source: str):
    """The Hub dataset as a `datasets` (Iterable)Dataset: streamed when the hub is reachable, from
    the local HF cache when offline; an unreachable hub is one line."""
    import datasets

    name, revision, split = parse_hub(source)
    offline = hub_offline()
    try:
        return datasets.load_dataset(name, split=split, revision=revision, streaming=not offline)
    except Exception as exc:  # noqa: BLE001 - datasets and huggingface_hub raise many types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if offline:
            raise AlbatError(f"{source}: the Hugging Face Hub is off (HF_HUB_OFFLINE=1) and the dataset is not in "
                             "the local cache; on a machine that reaches the hub, save it with "
                             "datasets.load_dataset(...).save_to_disk(DIR) and pass DIR") from None
        raise AlbatError(f"{source}: cannot load it from the Hugging Face Hub ({first[:200]}); check the name, "
                         "split and network, or pass a folder saved with save_to_disk") from None
