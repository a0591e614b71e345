"""The image readers (stores/image_corpus.py) on tiny real images, broken ones included, and
`albat embed --modality image` on each format: broken images skipped, counted and listed."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from albat.stores.errors import AlbatError
from albat.stores.image_corpus import (ImageCorpusSpec, count_entries, decode_image, iter_entries, pixel_hash,
                                       resolve_image_sources)
from image_fixtures import (encoded, image_folder, parquet_corpus, picture, tiny_clip_config, truncated_png,
                            webdataset_shard)

needs_open_clip = pytest.mark.skipif(importlib.util.find_spec("open_clip") is None, reason="image extra not installed")


def _entries(path: Path, **spec) -> list:
    spec = ImageCorpusSpec(paths=[str(path)], **spec)
    return [e for source, fmt in resolve_image_sources(spec) for e in iter_entries(spec, source, fmt)]


def test_imagefolder_captions_from_sidecars_and_jsonl(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "corpus")
    entries = _entries(root)
    names = [e.name for e in entries]
    assert names == sorted(names) and len(entries) == 15  # 12 images + 3 broken files, all counted
    by_name = {e.name: e for e in entries}
    assert by_name["red/r2.png"].caption == "a red picture number 2"  # sidecar
    assert by_name["blue/b3.jpg"].caption == "a blue picture number 3"  # captions.jsonl
    assert by_name["blue/zero.png"].caption == "zero"  # neither: the file name's stem
    assert [e.row for e in entries] == list(range(15))
    spec = ImageCorpusSpec(paths=[str(root)])
    assert count_entries(spec, root, "imagefolder") == 15
    assert [e.name for e in iter_entries(spec, root, "imagefolder", 3, 5)] == names[3:5]


def test_broken_images_are_told_apart(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="zero-byte"):
        decode_image(b"")
    with pytest.raises(ValueError, match="not a decodable image"):
        decode_image(b"garbage bytes")
    with pytest.raises(ValueError, match="truncated"):
        decode_image(truncated_png())
    assert decode_image(encoded(picture(0, 1))).size == (24, 20)


def test_pixel_hash_sees_pixels_not_bytes() -> None:
    from PIL import Image
    import io

    pixels = picture(5, 0)
    again = io.BytesIO()
    Image.fromarray(pixels).save(again, format="PNG", compress_level=1)  # other bytes, same pixels
    assert encoded(pixels) != again.getvalue()
    assert pixel_hash(decode_image(encoded(pixels))) == pixel_hash(decode_image(again.getvalue()))
    assert pixel_hash(decode_image(encoded(pixels))) != pixel_hash(decode_image(encoded(picture(6, 0))))


def test_transparency_is_composited_over_white() -> None:
    from PIL import Image
    import io

    out = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(out, format="PNG")
    assert np.asarray(decode_image(out.getvalue())).min() == 255


@pytest.mark.parametrize("kind", ["bytes", "paths", "struct"])
def test_parquet_images(tmp_path: Path, kind: str) -> None:
    path = parquet_corpus(tmp_path / "corpus.parquet", kind=kind)
    entries = _entries(path, keep_columns=("n",))
    assert len(entries) == 8 and entries[2].caption == "picture 2 of colour 2"
    assert decode_image(entries[0].data).size == (24, 20)
    assert entries[3].extras == {"n": 3}
    assert not entries[-1].data  # the zero-byte row is an entry; the embed stage skips it
    if kind == "paths":
        assert entries[1].name == "img1.png"


def test_parquet_without_the_image_column_is_refused(tmp_path: Path) -> None:
    path = parquet_corpus(tmp_path / "corpus.parquet")
    with pytest.raises(AlbatError, match="no column 'picture'.*--image-column"):
        count_entries(ImageCorpusSpec(paths=[str(path)], image_column="picture"), path, "parquet")


def test_webdataset_shards(tmp_path: Path) -> None:
    (tmp_path / "shards").mkdir()
    webdataset_shard(tmp_path / "shards" / "000000.tar")
    entries = _entries(tmp_path / "shards")
    assert [e.name for e in entries] == ["s/0000.png", "s/0001.png", "s/0002.png", "s/0003.png", "s/0004.png",
                                         "s/9000.jpg", "s/9001", "s/9002.png"]
    assert entries[1].caption == "a green picture 1" and entries[5].caption == "a red jpeg"
    assert entries[6].data is None and "no image member" in entries[6].problem
    assert count_entries(ImageCorpusSpec(paths=[]), tmp_path / "shards" / "000000.tar", "webdataset") == 8


def test_a_damaged_tar_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.tar"
    path.write_bytes(b"\x00" * 10 + b"not a tar at all" * 40)
    with pytest.raises(AlbatError, match="bad.tar: not a readable tar"):
        count_entries(ImageCorpusSpec(paths=[str(path)]), path, "webdataset")


def test_a_bad_captions_file_names_its_line(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "corpus", broken=False)
    (root / "captions.jsonl").write_text('{"file_name": "red/r0.png", "text": "ok"}\n{oops\n')
    with pytest.raises(AlbatError, match="captions.jsonl line 2: invalid JSON"):
        count_entries(ImageCorpusSpec(paths=[str(root)]), root, "imagefolder")


@needs_open_clip
@pytest.mark.parametrize("fmt", ["imagefolder", "parquet", "webdataset"])
def test_embed_skips_and_lists_broken_images(tmp_path: Path, fmt: str) -> None:
    from conftest import albat

    if fmt == "imagefolder":
        corpus, broken, total = image_folder(tmp_path / "corpus"), 3, 15
    elif fmt == "parquet":
        corpus, broken, total = parquet_corpus(tmp_path / "corpus.parquet"), 1, 8
    else:
        (tmp_path / "shards").mkdir()
        webdataset_shard(tmp_path / "shards" / "000000.tar")
        webdataset_shard(tmp_path / "shards" / "000001.tar", rows=2)
        corpus, broken, total = tmp_path / "shards", 4, 13
    work = tmp_path / "work"
    assert albat("embed", "--work", work, "--modality", "image", "--input", corpus, "--image-model",
                 tiny_clip_config(tmp_path), "--shard-rows", "4", "--image-workers", "1", "--quiet") == 0
    info = json.loads((work / "store" / "store.json").read_text())
    report = info["image_report"]
    assert report["skipped"] == broken and info["rows"] == total - broken
    assert sum(report["skipped_per_file"].values()) == broken
    assert all(item["problem"] for item in report["skipped_images"])
    from albat.stores.embedding_store import EmbeddingStore

    store = EmbeddingStore(work / "store")
    ids = store.all_ids()
    skipped_rows = {(i["source"], i["row"]) for i in report["skipped_images"]}
    assert len(ids) == total - broken and len(skipped_rows) == broken
    assert store.vectors(0).shape[1] == 32 and store.vectors(0, "pair").shape == store.vectors(0).shape
    # a rerun skips the finished store
    assert albat("embed", "--work", work, "--modality", "image", "--input", corpus, "--image-model",
                 tiny_clip_config(tmp_path), "--shard-rows", "4", "--image-workers", "1", "--quiet") == 0
