"""Tiny real image corpora (PNG and JPEG files, some broken) in every format the image readers take,
and a tiny open_clip model config (random weights, seeded)."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np

TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def tiny_clip_config(directory: Path) -> Path:
    path = directory / "albat-test-tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    return path


def picture(seed: int, colour: int, size: tuple[int, int] = (24, 20)) -> np.ndarray:
    """A small noisy picture dominated by one channel (0 red, 1 green, 2 blue)."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 80).astype(np.uint8)
    pixels[..., colour] += 150
    return pixels


def encoded(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


BROKEN = {"zero.png": b"", "garbage.png": b"this is not an image"}


def truncated_png(seed: int = 99) -> bytes:
    data = encoded(picture(seed, 0, (40, 40)))
    return data[: len(data) // 2]


def image_folder(root: Path, per_colour: int = 6, broken: bool = True) -> Path:
    """red/ with sidecar .txt captions, blue/ without (captions from captions.jsonl), and broken files."""
    (root / "red").mkdir(parents=True)
    (root / "blue").mkdir()
    records = []
    for i in range(per_colour):
        (root / "red" / f"r{i}.png").write_bytes(encoded(picture(i, 0)))
        (root / "red" / f"r{i}.txt").write_text(f"a red picture number {i}\n")
        (root / "blue" / f"b{i}.jpg").write_bytes(encoded(picture(100 + i, 2), "JPEG"))
        records.append({"file_name": f"blue/b{i}.jpg", "text": f"a blue picture number {i}"})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if broken:
        for name, data in BROKEN.items():
            (root / "blue" / name).write_bytes(data)
        (root / "red" / "truncated.png").write_bytes(truncated_png())
    return root


def parquet_corpus(path: Path, rows: int = 8, kind: str = "bytes") -> Path:
    """image column of bytes, of relative paths, or of HF Image structs; the last row zero bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images, captions = [], []
    for i in range(rows):
        data = encoded(picture(200 + i, i % 3)) if i < rows - 1 else b""
        if kind == "paths":
            (path.parent / f"img{i}.png").write_bytes(data)
            images.append(f"img{i}.png")
        elif kind == "struct":
            images.append({"bytes": data, "path": f"img{i}.png"})
        else:
            images.append(data)
        captions.append(f"picture {i} of colour {i % 3}")
    pq.write_table(pa.table({"image": images, "text": captions, "n": list(range(rows))}), path)
    return path


def webdataset_shard(path: Path, rows: int = 5) -> Path:
    """png+txt samples, one jpg+json sample, one sample with no image and one garbage png."""
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for i in range(rows):
            add(f"s/{i:04d}.png", encoded(picture(300 + i, 1)))
            add(f"s/{i:04d}.txt", f"a green picture {i}".encode())
        add("s/9000.jpg", encoded(picture(400, 0), "JPEG"))
        add("s/9000.json", json.dumps({"text": "a red jpeg"}).encode())
        add("s/9001.txt", b"a caption without its image")
        add("s/9002.png", b"garbage")
        add("s/9002.txt", b"a garbage png")
    return path
