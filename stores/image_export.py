"""Emitted image shards as trainers read them.

- `with_image_feature`: the shard schema carries HF `datasets` features with the image column as an
  `Image` feature (a struct of the original bytes and name), so `load_dataset("parquet", ...)`
  yields PIL images.
- `export_imagefolder`: an HF imagefolder, `images/NNNNNN.EXT` + `metadata.jsonl` (`file_name`,
  the caption as `text`, weights and provenance), which diffusers' text-to-image LoRA script reads
  with `--train_data_dir DIR` and its DreamBooth scripts with `--instance_data_dir DIR/images`.
  Written into a staging folder and swapped in whole (stores.atomic).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from albat.stores.atomic import staged_directory

IMAGEFOLDER_METADATA = "metadata.jsonl"
_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"))


def with_image_feature(table: pa.Table, image_column: str) -> pa.Table:
    """The table with HF features metadata: every column as inferred, the image column an `Image`."""
    import datasets

    features = datasets.Features.from_arrow_schema(table.schema)
    features[image_column] = datasets.Image()
    return table.cast(features.arrow_schema)


def image_suffix(data: bytes) -> str | None:
    """The file suffix of encoded image bytes by their magic number (WebP: RIFF....WEBP)."""
    for magic, suffix in _MAGIC:
        if data.startswith(magic):
            return suffix
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return None


def _as_file(data: bytes) -> tuple[bytes, str]:
    suffix = image_suffix(data)
    if suffix is not None:
        return data, suffix
    import io

    from albat.stores.image_corpus import decode_image

    out = io.BytesIO()
    decode_image(data).save(out, format="PNG")  # any other format PIL reads: re-encoded losslessly
    return out.getvalue(), ".png"


def _json_value(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def export_imagefolder(tables: list[pa.Table], directory: Path, image_column: str, caption_column: str) -> dict[str, Any]:
    """Write every row with an image as `images/NNNNNN.EXT` and its `metadata.jsonl` line; returns counts."""
    written = 0
    with staged_directory(Path(directory)) as staging:
        (staging / "images").mkdir()
        with open(staging / IMAGEFOLDER_METADATA, "w", encoding="utf-8") as meta:
            for table in tables:
                others = [c for c in table.column_names if c not in (image_column, caption_column)]
                for row in table.to_pylist():
                    cell = row.get(image_column) or {}
                    if not cell.get("bytes"):
                        continue
                    data, suffix = _as_file(cell["bytes"])
                    name = f"images/{written:06d}{suffix}"
                    (staging / name).write_bytes(data)
                    record = {"file_name": name, "text": row.get(caption_column) or "",
                              "original_name": cell.get("path"), **{c: _json_value(row[c]) for c in others}}
                    meta.write(json.dumps(record) + "\n")
                    written += 1
    return {"imagefolder": str(directory), "images": written}
