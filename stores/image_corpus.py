"""Readers for image-caption corpora as users hold them, yielding raw (undecoded) entries.

Sources, in a deterministic order (inputs sorted, entries sorted within a source):
- `imagefolder`: a folder tree of images (.png .jpg .jpeg .webp .bmp .gif); each image's caption
  is the column `caption_column` of its record in `captions.jsonl` or `metadata.jsonl` at the
  folder's root (records name their image by `file_name`, relative to the root, as HF imagefolder
  does; other keys can be kept), else its sidecar `NAME.txt`, else the file name's stem;
- `parquet`: an image column of bytes, of paths (relative to the Parquet file's folder), or of HF
  `Image` structs {bytes, path}, and a caption column;
- `webdataset`: `.tar` shards whose members share a key (`dir/key.png`, `dir/key.txt`): the image
  is `jpg|jpeg|png|webp`, the caption `txt`, or the caption column of `json`.

An entry's number inside its source (`row`) counts every entry, broken or not, so ids and rows stay
stable when an image is skipped. Decoding (`decode_image`) is separate: the embed stage runs it in
worker processes, and an undecodable, truncated or zero-byte image is skipped and reported there,
never fatal. Any other problem (no such file, a Parquet without the columns, an unreadable tar) is
an AlbatError naming the file.
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from albat.stores.corpus import json_line
from albat.stores.errors import AlbatError

IMAGE_FORMATS = ("auto", "imagefolder", "parquet", "webdataset")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
CAPTION_FILES = ("captions.jsonl", "metadata.jsonl")
_WDS_IMAGE = ("jpg", "jpeg", "png", "webp")
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # HF datasets' Image feature


@dataclass(frozen=True)
class ImageCorpusSpec:
    paths: Sequence[str]
    caption_column: str = "text"
    image_column: str = "image"
    id_column: str | None = None
    keep_columns: Sequence[str] = field(default_factory=tuple)
    format: str = "auto"


@dataclass
class RawImage:
    row: int  # entry number inside its source, counting broken entries too
    name: str  # path relative to the source (folder, tar) or as the Parquet row names it
    data: bytes | None  # the encoded image; None when missing
    caption: str
    extras: dict[str, Any] = field(default_factory=dict)  # id and kept columns
    problem: str | None = None  # why there is no image (missing file, no image member)


def resolve_image_sources(spec: ImageCorpusSpec) -> list[tuple[Path, str]]:
    """Inputs expanded to (source, format): a folder of .tar files or .parquet files is those files,
    any other folder is one imagefolder source."""
    if spec.format not in IMAGE_FORMATS:
        raise AlbatError(f"unknown image corpus format '{spec.format}'; use one of {', '.join(IMAGE_FORMATS)}")
    if not spec.paths:
        raise AlbatError("no input given; pass --input PATH (an image folder, Parquet or WebDataset .tar shards)")
    found: list[tuple[Path, str]] = []
    for raw in spec.paths:
        matches = sorted(glob.glob(str(raw))) if any(c in str(raw) for c in "*?[") else [str(raw)]
        if not matches or not Path(matches[0]).exists():
            raise AlbatError(f"{raw}: no such file or directory; check the input path")
        for match in map(Path, matches):
            found.extend(_sources_of(match, spec.format))
    return found


def _sources_of(path: Path, fmt: str) -> list[tuple[Path, str]]:
    if path.is_file():
        kind = fmt if fmt != "auto" else {".tar": "webdataset", ".parquet": "parquet", ".pq": "parquet"}.get(path.suffix)
        if kind is None or kind == "imagefolder":
            raise AlbatError(f"{path}: not an image corpus (give a folder of images, a .parquet or a .tar); "
                             "pass --format imagefolder|parquet|webdataset")
        return [(path, kind)]
    tars = sorted(p for p in path.iterdir() if p.suffix == ".tar")
    tables = sorted(p for p in path.iterdir() if p.suffix in (".parquet", ".pq"))
    if fmt in ("auto", "webdataset") and tars:
        return [(p, "webdataset") for p in tars]
    if fmt in ("auto", "parquet") and tables:
        return [(p, "parquet") for p in tables]
    if fmt in ("webdataset", "parquet"):
        raise AlbatError(f"{path}: holds no {'.tar' if fmt == 'webdataset' else '.parquet'} files; check --format")
    return [(path, "imagefolder")]


def _stem_caption(name: str) -> str:
    return " ".join(Path(name).stem.replace("_", " ").replace("-", " ").split())


# ----- imagefolder --------------------------------------------------------------------------------
def _folder_images(root: Path) -> list[str]:
    names = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in rel.parts) \
                and (path.is_file() or path.is_symlink()):
            names.append(rel.as_posix())
    return sorted(names)


def _folder_records(root: Path, spec: ImageCorpusSpec) -> dict[str, dict[str, Any]]:
    for name in CAPTION_FILES:
        path = root / name
        if not path.exists():
            continue
        records: dict[str, dict[str, Any]] = {}
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            record = json_line(path, lineno, line)
            if not isinstance(record, dict) or not isinstance(record.get("file_name"), str):
                raise AlbatError(f"{path} line {lineno}: each line needs a \"file_name\" naming an image under "
                                 f"{root}")
            records[Path(record["file_name"]).as_posix()] = record
        return records
    return {}


def _folder_entries(root: Path, spec: ImageCorpusSpec, start: int, stop: int | None) -> Iterator[RawImage]:
    records = _folder_records(root, spec)
    for row, name in enumerate(_folder_images(root)):
        if row < start:
            continue
        if stop is not None and row >= stop:
            return
        path = root / name
        record = records.get(name, {})
        caption = record.get(spec.caption_column)
        if not isinstance(caption, str):
            sidecar = path.with_suffix(".txt")
            caption = sidecar.read_text(encoding="utf-8", errors="replace").strip() if sidecar.is_file() else ""
        try:
            data, problem = path.read_bytes(), None
        except OSError as exc:
            data, problem = None, f"unreadable ({exc.strerror or exc})"
        yield RawImage(row, name, data, caption or _stem_caption(name), _extras(record, spec, f"{root / CAPTION_FILES[0]}"),
                       problem)


def _extras(record: dict[str, Any], spec: ImageCorpusSpec, where: str) -> dict[str, Any]:
    wanted = ([spec.id_column] if spec.id_column else []) + list(spec.keep_columns)
    if wanted and record and any(c not in record for c in wanted):
        missing = next(c for c in wanted if c not in record)
        raise AlbatError(f"{where}: record of {record.get('file_name')} has no '{missing}'; give every record "
                         "that key or drop it from --id-column/--keep-columns")
    return {c: record.get(c) for c in wanted}


# ----- parquet ------------------------------------------------------------------------------------
def _parquet_entries(path: Path, spec: ImageCorpusSpec, start: int, stop: int | None) -> Iterator[RawImage]:
    extra = ([spec.id_column] if spec.id_column else []) + list(spec.keep_columns)
    columns = [spec.image_column, spec.caption_column, *[c for c in extra if c not in (spec.image_column,
                                                                                        spec.caption_column)]]
    try:
        handle = pq.ParquetFile(path)
        names = handle.schema_arrow.names
        for col in columns:
            if col not in names:
                flag = {spec.image_column: "--image-column", spec.caption_column: "--text-column"}.get(col, "--keep-columns")
                raise AlbatError(f"{path}: no column '{col}' (columns: {', '.join(names)}); pass {flag} with one of them")
        row = 0
        for batch in handle.iter_batches(batch_size=256, columns=columns):
            if stop is not None and row >= stop:
                return
            if row + batch.num_rows <= start:
                row += batch.num_rows
                continue
            table = pa.Table.from_batches([batch])
            images = table.column(spec.image_column).to_pylist()
            captions = table.column(spec.caption_column).to_pylist()
            others = {c: table.column(c).to_pylist() for c in extra}
            for i, (image, caption) in enumerate(zip(images, captions)):
                if start <= row < (stop if stop is not None else row + 1):
                    yield _parquet_entry(path, row, image, caption, {c: v[i] for c, v in others.items()})
                row += 1
    except AlbatError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise AlbatError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]}); re-export or remove it") from None


def _parquet_entry(path: Path, row: int, image: Any, caption: Any, extras: dict[str, Any]) -> RawImage:
    name, data, problem = f"row {row}", None, None
    if isinstance(image, dict):  # HF Image feature: {bytes, path}
        data, image = image.get("bytes"), image.get("path")
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    elif isinstance(image, str) and data is None:
        name = image
        target = Path(image) if Path(image).is_absolute() else path.parent / image
        try:
            data = target.read_bytes()
        except OSError as exc:
            problem = f"{target}: unreadable ({exc.strerror or exc})"
    elif isinstance(image, str):
        name = image
    elif data is None:
        problem = "no image in the row"
    text = caption if isinstance(caption, str) else ""
    return RawImage(row, name, data, text, extras, problem)


# ----- webdataset ---------------------------------------------------------------------------------
def _split_key(member: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the path up to the first dot of the file name."""
    head, _, base = member.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def _tar_groups(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for consecutive members sharing a key, in tar order."""
    try:
        with tarfile.open(path, "r:*") as tar:
            key, group = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = _split_key(member.name)
                if key is not None and k != key:
                    yield key, group
                    group = {}
                key = k
                handle = tar.extractfile(member)
                group[ext] = handle.read() if handle is not None else b""
            if key is not None:
                yield key, group
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise AlbatError(f"{path}: not a readable tar file ({exc}); re-create or remove the shard") from None


def _tar_entries(path: Path, spec: ImageCorpusSpec, start: int, stop: int | None) -> Iterator[RawImage]:
    for row, (key, group) in enumerate(_tar_groups(path)):
        if row < start:
            continue
        if stop is not None and row >= stop:
            return
        record: dict[str, Any] = {}
        if "json" in group:
            try:
                loaded = json.loads(group["json"].decode("utf-8"))
                record = loaded if isinstance(loaded, dict) else {}
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise AlbatError(f"{path} member {key}.json: not valid JSON; fix or remove it") from None
        caption = group["txt"].decode("utf-8", errors="replace").strip() if "txt" in group else record.get(spec.caption_column)
        ext = next((e for e in _WDS_IMAGE if e in group), None)
        data = group[ext] if ext else None
        extras = _extras({"file_name": key, **record}, spec, f"{path} member {key}.json") if record or spec.id_column \
            or spec.keep_columns else {}
        yield RawImage(row, f"{key}.{ext}" if ext else key, data, caption if isinstance(caption, str) and caption
                       else _stem_caption(key), extras, None if ext else "no image member (.jpg/.png/.webp)")


_READERS = {"imagefolder": _folder_entries, "parquet": _parquet_entries, "webdataset": _tar_entries}


def iter_entries(spec: ImageCorpusSpec, source: Path, fmt: str, start: int = 0,
                 stop: int | None = None) -> Iterator[RawImage]:
    """The raw entries [start, stop) of one source, in order."""
    yield from _READERS[fmt](Path(source), spec, start, stop)


def count_entries(spec: ImageCorpusSpec, source: Path, fmt: str) -> int:
    """Entries of a source (broken ones included), reading no image bytes where the format allows."""
    if fmt == "imagefolder":
        _folder_records(source, spec)  # a bad captions file is refused here, before anything is written
        return len(_folder_images(source))
    if fmt == "parquet":
        try:
            handle = pq.ParquetFile(source)
        except (pa.ArrowException, OSError) as exc:
            raise AlbatError(f"{source}: not a readable Parquet file ({str(exc).splitlines()[0]}); re-export or "
                             "remove it") from None
        for col in (spec.image_column, spec.caption_column):
            if col not in handle.schema_arrow.names:
                flag = "--image-column" if col == spec.image_column else "--text-column"
                raise AlbatError(f"{source}: no column '{col}' (columns: {', '.join(handle.schema_arrow.names)}); "
                                 f"pass {flag} with one of them")
        return handle.metadata.num_rows
    return sum(1 for _ in _tar_groups(source))


# ----- decoding -----------------------------------------------------------------------------------
def decode_image(data: bytes | None) -> Any:
    """The image as an RGB PIL image (transparency over white), fully decoded; ValueError saying
    why not (zero bytes, not an image, truncated)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ValueError("zero-byte image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, rgba).convert("RGB")
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError("not a decodable image") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"undecodable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def pixel_hash(image: Any) -> int:
    """64-bit signed hash of the decoded RGB pixels and size: the same picture saved as PNG or
    re-compressed losslessly hashes the same."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{image.width}x{image.height}".encode())
    digest.update(image.tobytes())
    return int.from_bytes(digest.digest(), "little", signed=True)


def image_cell(entry: RawImage) -> dict[str, Any]:
    """The entry as an HF `Image` struct value."""
    return {"bytes": entry.data, "path": entry.name}
