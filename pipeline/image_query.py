"""The query stage on an image store: adaptation and exclusion sets are image-caption corpora (any
reader of `stores.image_corpus`). Images retrieve images (the index holds the image embeddings),
captions are embedded as the pair side (`adaptation.pair.npy`, for the contrastive surrogate).
Exact duplicates are corpus images with the same decoded pixels (`albat_text_hash` of an image
store); near duplicates are corpus images within `--dedup-threshold` cosine of an example.

Captions alone (every adaptation path a JSONL, CSV, TSV or text file), or any adaptation set with
`retrieve_by = "caption"`, retrieve captions: text→text,
an exact scan of the store's caption vectors (`pipeline.exact_scan`; the index holds images only),
and the query records `side = "pair"`, so the filter reads the store through `PairSideView` and
every method compares captions with captions. Near duplicates are corpus captions within the
threshold of an example's; an exclusion set of images also blocks their pixels' copies."""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from albat.pipeline.encoders import check_same_encoder
from albat.pipeline.image_encoder import ImageEncoder, image_encoder_from_identity
from albat.pipeline.exact_scan import ExactScan
from albat.pipeline.shard_map import executor_settings
from albat.pipeline.query import MAX_QUERY_EXAMPLES, read_examples, retrieval_side, retrieve
from albat.stores.embedding_store import ROW, SOURCE, EmbeddingStore, PairSideView
from albat.stores.errors import AlbatError
from albat.stores.image_corpus import (IMAGE_TYPE, ImageCorpusSpec, decode_image, image_cell, iter_entries,
                                       pixel_hash, resolve_image_sources)
from albat.stores.sources import is_text_file


def read_image_examples(paths: list[str], caption_column: str, image_column: str, fmt: str, flag: str
                        ) -> tuple[pa.Table, list[Any], list[int]]:
    """A small image set read whole: (table of caption, image, source, row; decoded images; pixel
    hashes). A broken image here is an error: these few examples are the user's own."""
    spec = ImageCorpusSpec(paths=paths, caption_column=caption_column, image_column=image_column,
                           format="auto" if fmt in ("jsonl", "txt", "hf") else fmt)
    captions, cells, sources, rows, images, hashes = [], [], [], [], [], []
    for source, kind in resolve_image_sources(spec):
        for entry in iter_entries(spec, source, kind):
            try:
                if entry.problem:
                    raise ValueError(entry.problem)
                image = decode_image(entry.data)
            except ValueError as exc:
                raise AlbatError(f"{source} entry {entry.name}: {exc}; fix or remove that image from {flag}") from None
            images.append(image)
            hashes.append(pixel_hash(image))
            captions.append(entry.caption)
            cells.append(image_cell(entry))
            sources.append(str(source))
            rows.append(entry.row)
            if len(images) > MAX_QUERY_EXAMPLES:
                raise AlbatError(f"{paths[0]}: more than {MAX_QUERY_EXAMPLES} examples; pass a smaller set")
    table = pa.table({caption_column: pa.array(captions, pa.string()), image_column: pa.array(cells, IMAGE_TYPE),
                      SOURCE: pa.array(sources, pa.string()), ROW: pa.array(rows, pa.int64())})
    return table, images, hashes


def compute_image_query(options: dict[str, Any], config: dict[str, Any], store: EmbeddingStore, info: dict[str, Any],
                        index: Any, infos: dict[str, Any]) -> dict[str, Any]:
    """What `QueryStage.compute` returns, for an image store."""
    encoder = image_encoder_from_identity(info["encoder"], device=options["device"])
    if options.get("encoder"):
        encoder = ImageEncoder(name=options["encoder"], pretrained=encoder.pretrained, device=options["device"])
    check_same_encoder(info["encoder"], encoder, str(options["adaptation"][0]))
    image_column = info["image_column"]
    by_caption = retrieval_side(info, options) == PairSideView.SIDE
    if by_caption and all(is_text_file(p) for p in options["adaptation"]):
        adaptation, captions = read_examples(options["adaptation"], options["text_column"], options["format"], 0,
                                             "--adaptation-text-column", all_columns=True)
        return caption_query(options, store, info, encoder, adaptation, captions, [], executor_settings(config))
    adaptation, images, hashes = read_image_examples(options["adaptation"], options["text_column"], image_column,
                                                     options["format"], "--adaptation")
    if not images:
        raise AlbatError(f"{', '.join(options['adaptation'])}: zero adaptation images; give at least one")
    if by_caption:  # retrieve_by = caption: the images stay in the adaptation rows, their pixels' copies blocked
        return caption_query(options, store, info, encoder, adaptation,
                             adaptation.column(options["text_column"]).to_pylist(), hashes, executor_settings(config))
    exclude, exclude_images, exclude_hashes = (
        read_image_examples(options["exclude"], options["exclude_text_column"], image_column, "auto", "--exclude")
        if options["exclude"] else (None, [], []))
    vectors = encoder.encode(images)
    exclude_vectors = encoder.encode(exclude_images) if exclude_images else np.empty((0, encoder.dim), np.float32)
    pair_vectors = encoder.encode_texts(adaptation.column(options["text_column"]).to_pylist())
    return retrieve(options, store, info, index, infos, adaptation, vectors, pair_vectors, hashes,
                    exclude, exclude_vectors, exclude_hashes)


def caption_query(options: dict[str, Any], store: EmbeddingStore, info: dict[str, Any], encoder: ImageEncoder,
                  adaptation: Any, texts: list[str], hashes: list[int], executor: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Text→text: the adaptation captions (`texts`, of the rows of `adaptation`; `hashes`: their
    images' pixel hashes, if they have images) retrieve corpus captions (see the module's doc)."""
    if not info.get("pair_column"):
        raise AlbatError(f"{store.root}: this image store holds no caption vectors to retrieve by; re-embed it "
                         "with a caption column, or give the adaptation images with their captions")
    if not texts:
        raise AlbatError(f"{', '.join(options['adaptation'])}: zero adaptation captions; give at least one")
    exclude, exclude_captions, exclude_hashes = None, [], []
    if options["exclude"]:
        if all(is_text_file(p) for p in options["exclude"]):
            exclude, exclude_captions = read_examples(options["exclude"], options["exclude_text_column"], "auto", 0,
                                                      "--exclude-text-column")
        else:  # images: their captions are compared, their pixels' copies blocked
            exclude, _, exclude_hashes = read_image_examples(options["exclude"], options["exclude_text_column"],
                                                             info["image_column"], "auto", "--exclude")
            exclude_captions = exclude.column(options["exclude_text_column"]).to_pylist()
    vectors = encoder.encode_texts(texts)
    exclude_vectors = (encoder.encode_texts(exclude_captions) if exclude_captions
                       else np.empty((0, encoder.dim), np.float32))
    view = PairSideView(store.root)
    scan = ExactScan(EmbeddingStore(store.root), "pair", executor)
    out = retrieve(options, view, view.info, scan, {"kind": "exact_scan"}, adaptation, vectors, None, hashes,
                   exclude, exclude_vectors, exclude_hashes, executor)
    return {**out, "side": PairSideView.SIDE}
