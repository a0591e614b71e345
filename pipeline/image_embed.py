"""`albat embed --modality image`: image-caption corpora through open_clip into the embedding store.

The store is the text store's layout with the pair mechanism: a shard's `emb.npy` holds the image
embeddings (what the index searches: image→image retrieval), its `pair.npy` the caption embeddings
under the same ids, and its metadata the caption, the image itself (an HF `Image` struct: the
original bytes and name), `albat_text_hash` = the hash of the decoded pixels (exact duplicates),
source and row. Shards are planned from each source's entry count, so an entry's default id is its
stream position whether or not it decodes; an undecodable, truncated or zero-byte image is left out
of its shard, listed in that shard's metadata (Parquet key `albat_skipped`) and summed per file in
`store.json` (`image_report`), never fatal.

Decoding and preprocessing run in torch DataLoader worker processes (`--image-workers`), a batch
ahead of the encoder; 0 decodes in this process.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from albat.pipeline.image_encoder import ImageEncoder
from albat.pipeline.progress import progress_bar
from albat.pipeline.shards import ShardTask
from albat.stores.corpus import FileCount
from albat.stores.embedding_store import ID, ROW, SOURCE, TEXT_HASH, EmbeddingStore
from albat.stores.errors import AlbatError
from albat.stores.image_corpus import (IMAGE_TYPE, ImageCorpusSpec, RawImage, count_entries, decode_image,
                                       image_cell, iter_entries, pixel_hash, resolve_image_sources)
from albat.stores.workdir import fingerprint

SKIPPED_KEY = b"albat_skipped"
REPORT_LIMIT = 1000  # broken images listed by name in store.json (all are counted)


def image_spec(options: dict[str, Any]) -> ImageCorpusSpec:
    return ImageCorpusSpec(paths=list(options["input"]), caption_column=options["text_column"],
                           image_column=options["image_column"], id_column=options["id_column"],
                           keep_columns=tuple(options["keep_columns"]), format=options["format"])


def scan_images(spec: ImageCorpusSpec) -> list[FileCount]:
    """Each source's entry count, in stream order; refuses a corpus with no entry."""
    counts = [FileCount(str(path), fmt, count_entries(spec, path, fmt)) for path, fmt in resolve_image_sources(spec)]
    if sum(c.rows for c in counts) == 0:
        raise AlbatError(f"{', '.join(map(str, spec.paths))}: holds no images; check the input")
    return counts


def image_fingerprint(options: dict[str, Any], spec: ImageCorpusSpec) -> str:
    inputs = []
    for path, _ in resolve_image_sources(spec):
        for f in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
            stat = f.stat()
            inputs.append([str(f), stat.st_size, stat.st_mtime_ns])
    return fingerprint({"modality": "image", "spec": [spec.caption_column, spec.image_column, spec.id_column,
                                                      list(spec.keep_columns), spec.format],
                        "inputs": inputs, "model": options["image_model"], "pretrained": options["image_pretrained"],
                        "shard_rows": options["shard_rows"]})


class DecodeDataset:
    """Map-style dataset over raw entries: (position, preprocessed tensor or None, pixel hash, problem)."""

    def __init__(self, entries: list[RawImage], transform: Callable[[Any], Any]):
        self.entries, self.transform = entries, transform

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[int, Any, int, str | None]:
        entry = self.entries[i]
        if entry.problem:
            return i, None, 0, entry.problem
        try:
            image = decode_image(entry.data)
        except ValueError as exc:
            return i, None, 0, str(exc)
        return i, self.transform(image), pixel_hash(image), None


def _collate(items: list[tuple[int, Any, int, str | None]]) -> list[tuple[int, Any, int, str | None]]:
    return items


def decoded_batches(entries: list[RawImage], transform: Callable[[Any], Any], batch_size: int,
                    workers: int) -> Iterator[list[tuple[int, Any, int, str | None]]]:
    """Batches decoded and preprocessed by `workers` DataLoader processes (0: here), in order."""
    from torch.utils.data import DataLoader

    loader = DataLoader(DecodeDataset(entries, transform), batch_size=batch_size, shuffle=False,
                        num_workers=min(workers, max(1, len(entries) // batch_size)) if workers else 0,
                        collate_fn=_collate, prefetch_factor=2 if workers else None)
    yield from loader


def encode_entries(encoder: ImageEncoder, entries: list[RawImage], workers: int,
                   on_progress: Callable[[int], object] = lambda _: None
                   ) -> tuple[list[int], np.ndarray, list[int], list[tuple[int, str]]]:
    """(kept entry positions, their image vectors, their pixel hashes, [(position, problem)] skipped)."""
    import torch

    kept, hashes, vectors, skipped = [], [], [], []
    for batch in decoded_batches(entries, encoder.preprocess, encoder.batch_size, workers):
        good = [item for item in batch if item[3] is None]
        skipped.extend((i, problem) for i, _, _, problem in batch if problem is not None)
        if good:
            vectors.append(encoder.encode(torch.stack([t for _, t, _, _ in good])))
            kept.extend(i for i, _, _, _ in good)
            hashes.extend(h for _, _, h, _ in good)
        on_progress(len(batch))
    dim = encoder.dim
    return kept, (np.concatenate(vectors) if vectors else np.empty((0, dim), np.float32)), hashes, skipped


def entries_table(entries: list[RawImage], kept: list[int], spec: ImageCorpusSpec) -> dict[str, pa.Array]:
    """The caption, the image struct and the kept columns of the kept entries."""
    rows = [entries[i] for i in kept]
    columns: dict[str, pa.Array] = {spec.caption_column: pa.array([e.caption for e in rows], pa.string()),
                                    spec.image_column: pa.array([image_cell(e) for e in rows], IMAGE_TYPE)}
    for col in spec.keep_columns:
        columns[col] = pa.array([e.extras.get(col) for e in rows])
    return columns


def read_task_entries(spec: ImageCorpusSpec, task: ShardTask) -> tuple[list[RawImage], list[str], list[int]]:
    """A shard's raw entries with the source of each and its stream position (the default id)."""
    entries, sources, positions, position = [], [], [], task.position
    for part in task.ranges:
        for entry in iter_entries(spec, Path(part.source), part.format, part.start, part.stop):
            entries.append(entry)
            sources.append(part.source)
            positions.append(position)
            position += 1
    if position - task.position != task.rows:
        raise AlbatError(f"{', '.join(p.source for p in task.ranges)}: changed while albat read it "
                         f"(shard {task.shard} expected {task.rows} entries); rerun with --force")
    return entries, sources, positions


def _ids(entries: list[RawImage], kept: list[int], positions: list[int], spec: ImageCorpusSpec,
         sources: list[str]) -> pa.Array:
    if not spec.id_column:
        return pa.array([positions[i] for i in kept], pa.int64())
    values = [entries[i].extras.get(spec.id_column) for i in kept]
    for i, value in zip(kept, values):
        if not isinstance(value, int) or isinstance(value, bool):
            raise AlbatError(f"{sources[i]} entry {entries[i].name}: id {value!r} in '{spec.id_column}' is not an "
                             "integer; give every image an integer id, or drop --id-column")
    return pa.array(values, pa.int64())


def embed_image_task(encoder: ImageEncoder, spec: ImageCorpusSpec, task: ShardTask, workers: int,
                     on_progress: Callable[[int], object] = lambda _: None) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """One shard: (metadata with the skipped entries in its schema metadata, image vectors, caption vectors)."""
    entries, sources, positions = read_task_entries(spec, task)
    kept, vectors, hashes, skipped = encode_entries(encoder, entries, workers, on_progress)
    columns = {ID: _ids(entries, kept, positions, spec, sources),
               SOURCE: pa.array([sources[i] for i in kept], pa.string()),
               ROW: pa.array([entries[i].row for i in kept], pa.int64()),
               TEXT_HASH: pa.array(hashes, pa.int64()), **entries_table(entries, kept, spec)}
    listed = [{"source": sources[i], "row": entries[i].row, "name": entries[i].name, "problem": problem}
              for i, problem in skipped]
    meta = pa.table(columns).replace_schema_metadata({SKIPPED_KEY: json.dumps(listed).encode()})
    captions = encoder.encode_texts([entries[i].caption for i in kept])
    return meta, vectors, captions


def encode_image_shards(encoder: ImageEncoder, spec: ImageCorpusSpec, store: EmbeddingStore, tasks: list[ShardTask],
                        workers: int, show_progress: bool) -> Iterator[tuple[int, int, Any, Any, Any]]:
    """(shard, rows, metadata, image vectors, caption vectors) for every task, in order, as
    `pipeline.embed.encode_shards` yields them; rows are the shard's kept images."""
    with progress_bar(total=sum(t.rows for t in tasks), desc="embed images", enabled=show_progress) as bar:
        for task in tasks:
            if store.is_done(task.shard):
                bar.update(task.rows)
                record = store.done_record(task.shard) or {"rows": task.rows}
                yield task.shard, int(record["rows"]), None, None, None
                continue
            meta, vectors, captions = embed_image_task(encoder, spec, task, workers, bar.update)
            yield task.shard, meta.num_rows, meta, vectors, captions


def shard_skipped(store: EmbeddingStore, index: int) -> list[dict[str, Any]]:
    metadata = pq.read_schema(store.paths(index).meta).metadata or {}
    return json.loads(metadata.get(SKIPPED_KEY, b"[]"))


def image_report(store: EmbeddingStore) -> dict[str, Any]:
    """Broken images of the whole store: the count, per file, and the first REPORT_LIMIT by name."""
    listed = [item for index in store.shard_indices() for item in shard_skipped(store, index)]
    per_file: dict[str, int] = {}
    for item in listed:
        per_file[item["source"]] = per_file.get(item["source"], 0) + 1
    return {"skipped": len(listed), "skipped_per_file": per_file, "skipped_images": listed[:REPORT_LIMIT]}


def image_base_info(encoder: ImageEncoder, spec: ImageCorpusSpec, options: dict[str, Any]) -> dict[str, Any]:
    """What `store.json` says of an image store beyond the text store's keys."""
    return {"modality": "image", "encoder": encoder.identity(), "encoder_probe": None, "dim": encoder.dim,
            "text_column": spec.caption_column, "pair_column": spec.caption_column,
            "image_column": spec.image_column, "id_column": spec.id_column, "keep_columns": list(spec.keep_columns),
            "inputs": [str(p) for p, _ in resolve_image_sources(spec)]}


def make_image_encoder(options: dict[str, Any]) -> ImageEncoder:
    pretrained = options["image_pretrained"]
    if pretrained and Path(pretrained).expanduser().exists():
        pretrained = str(Path(pretrained).expanduser().resolve())
    model = options["image_model"]
    if model.endswith(".json") and Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    return ImageEncoder(name=model, pretrained=pretrained, batch_size=int(options["batch_size"]),
                        device=options["device"])
