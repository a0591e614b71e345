"""Stage 1, embed: stream the backbone corpus through the encoder into the embedding store."""
from __future__ import annotations

import shutil
import sys
import time
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from pipeline.encoders import TextEncoder, set_threads
from pipeline.prefetch import WriteBehind, prefetched
from pipeline.progress import progress_bar
from pipeline.stage import Plan, Stage, run_stage
from stores.corpus import CorpusBatch, CorpusSpec, count_rows, iter_batches, resolve_files, scan_corpus
from stores.embedding_store import ID, RESERVED, ROW, SOURCE, TEXT_HASH, EmbeddingStore, text_hash
from stores.errors import AlbatError
from stores.faults import crash_point
from stores.workdir import Workdir, fingerprint


def corpus_spec(options: dict[str, Any]) -> CorpusSpec:
    spec = CorpusSpec(paths=list(options["input"]), text_column=options["text_column"],
                      id_column=options["id_column"], keep_columns=tuple(options["keep_columns"]),
                      format=options["format"], skip_empty=bool(options["skip_empty"]),
                      pair_column=options["pair_column"] or None,
                      max_text_bytes=int(options.get("max_text_bytes") or 0))
    for col in spec.columns:
        if col in RESERVED:
            raise AlbatError(f"column '{col}' collides with albat's own metadata; rename it in the corpus")
    return spec


def _input_signature(spec: CorpusSpec) -> list[list[Any]]:
    """Path, size and mtime of every input file: a changed corpus must not resume an old store."""
    out = []
    for path, _ in resolve_files(spec):
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            stat = f.stat()
            out.append([str(f), stat.st_size, stat.st_mtime_ns])
    return out


def embed_fingerprint(options: dict[str, Any], spec: CorpusSpec) -> str:
    return fingerprint({"spec": [spec.columns, spec.text_column, spec.id_column, spec.format, spec.skip_empty],
                        "inputs": _input_signature(spec), "encoder": options["encoder"],
                        "dtype": options["dtype"], "backend": options["backend"],
                        "max_seq_length": options["max_seq_length"],
                        "shard_rows": options["shard_rows"]})


def shard_tables(batches: Iterator[CorpusBatch], shard_rows: int) -> Iterator[tuple[int, pa.Table]]:
    """Regroup reader batches into shards of exactly `shard_rows` rows (the last may be shorter),
    adding source, row and the stream position (the default id)."""
    pending: list[pa.Table] = []
    pending_rows = 0
    position = 0
    shard = 0
    for batch in batches:
        n = batch.table.num_rows
        table = batch.table.append_column(SOURCE, pa.array([batch.source] * n, pa.string()).dictionary_encode())
        table = table.append_column(ROW, batch.rows)
        table = table.append_column("__position", pa.array(np.arange(position, position + n), pa.int64()))
        position += n
        pending.append(table)
        pending_rows += n
        while pending_rows >= shard_rows:
            merged = pa.concat_tables(pending, promote_options="permissive").combine_chunks()
            yield shard, merged.slice(0, shard_rows)
            rest = merged.slice(shard_rows)
            pending, pending_rows, shard = [rest], rest.num_rows, shard + 1
    if pending_rows:
        yield shard, pa.concat_tables(pending, promote_options="permissive").combine_chunks()


def build_metadata(table: pa.Table, spec: CorpusSpec) -> pa.Table:
    """The stored metadata: albat columns first, then the user's columns under their own names."""
    texts = table.column(spec.text_column).to_pylist()
    if spec.id_column:
        ids = table.column(spec.id_column).cast(pa.int64())
    else:
        ids = table.column("__position")
    columns = {ID: ids, SOURCE: table.column(SOURCE).cast(pa.string()), ROW: table.column(ROW),
               TEXT_HASH: pa.array([text_hash(t) for t in texts], pa.int64())}
    for col in spec.columns:
        columns[col] = table.column(col)
    return pa.table(columns)


def encode_sorted(encoder: TextEncoder, texts: list[str], chunk: int,
                  on_progress: Callable[[int], object] = lambda _: None) -> np.ndarray:
    """Encode a shard longest-first in chunks (less padding per batch), rows back in input order."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    for start in range(0, len(texts), chunk):
        rows = order[start:start + chunk]
        out[rows] = encoder.encode([texts[i] for i in rows])
        on_progress(len(rows))
    return out


def probe_sample(spec: CorpusSpec, size: int, seed: int) -> list[str]:
    """A seeded sample of `size` texts from the first 16·size rows of the corpus stream."""
    texts: list[str] = []
    for batch in iter_batches(spec, batch_rows=max(size, 256)):
        texts.extend(batch.table.column(spec.text_column).to_pylist())
        if len(texts) >= 16 * size:
            break
    rng = np.random.default_rng([seed, 7])
    picked = rng.choice(len(texts), size=min(size, len(texts)), replace=False)
    return [texts[i] for i in np.sort(picked)]


# Read ahead, tokenize ahead and write behind while the encoder runs (False: one thing at a time,
# as before; benchmarks/bench_embed.py measures the encoder's idle time both ways).
OVERLAP = True

_PROBED: dict[tuple, tuple[tuple[str, str], dict[str, Any]]] = {}


def choose_encoder(options: dict[str, Any], spec: CorpusSpec, seed: int, show: bool) -> tuple[TextEncoder, dict[str, Any] | None]:
    """The encoder `embed` runs: as asked, or (both --backend and --dtype auto) the fastest runtime
    measured here that agrees with torch float32 (`pipeline.encoder_probe`). Measured once per
    process for the same encoder and settings."""
    from pipeline import encoder_probe as probe
    from pipeline.encoder_backends import onnx_available
    from pipeline.encoders import resolve_device

    def make(backend: str, dtype: str) -> TextEncoder:
        return TextEncoder(name=options["encoder"], dtype=dtype, backend=backend, max_seq_length=options["max_seq_length"],
                           batch_size=int(options["batch_size"]), device=options["device"])

    backend, dtype = options["backend"], options["dtype"]
    if backend != "auto" or dtype != "auto":
        return make("torch" if backend == "auto" else backend, "float32" if dtype == "auto" else dtype), None
    device = resolve_device(options["device"])
    import torch

    cuda_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    runtimes = probe.candidates(device, probe.native_bf16(probe.machine_flags()), cuda_bf16, onnx_available())
    key = (options["encoder"], device, options["max_seq_length"], int(options["batch_size"]), torch.get_num_threads())
    if key not in _PROBED:
        texts = probe_sample(spec, int(options["probe_rows"]), seed)
        choice, rows = probe.run_probe(texts, make, runtimes)
        _PROBED[key] = (choice, probe.probe_table(choice, rows, len(texts), seed))
        if show:
            print(f"embed: encoder runtimes timed on {len(texts)} corpus texts:\n{probe.format_table(rows, choice)}",
                  file=sys.stderr, flush=True)
    choice, table = _PROBED[key]
    return make(*choice), table


class EmbedStage(Stage):
    """Its completion record is the store's own `store.json` (`complete`), and it resumes: shards
    already written by a killed run are kept. A store built from other inputs is refused unless
    `force`, which deletes it once the new input has been read through."""
    name = "embed"

    def plan(self) -> Plan:
        options = self.config["embed"]
        spec = corpus_spec(options)
        store = EmbeddingStore(self.work.store)
        if self.force or not store.exists():
            scan_corpus(spec)  # bad input is refused before anything is written (or deleted)
        return Plan(embed_fingerprint(options, spec), (store.info_path,), options,
                    {"spec": spec, "store": store})

    def finished(self, plan: Plan) -> dict[str, Any] | None:
        """Complete when store.json says so and every shard and id lookup file matches its checksum
        (one read of the store); a damaged part is re-embedded by this run."""
        store = plan.inputs["store"]
        info = store.read_info()
        if info is None:
            return None
        if info.get("fingerprint") != plan.fingerprint:
            raise AlbatError(f"{store.root}: built from other inputs or embed options; pass --force to "
                             "re-embed, or use another --work")
        plan.inputs["damaged"] = [i for i in store.shard_indices() if store.shard_damage(i, info["dim"])]
        complete = info.get("complete") and isinstance(info.get("shards"), int) and isinstance(info.get("rows"), int)
        if not complete or plan.inputs["damaged"] or store.shard_indices() != list(range(info["shards"])) \
                or store.id_index_damage(info):
            return None
        return {"rows": info["rows"], "shards": info["shards"]}

    def discard(self, plan: Plan) -> None:
        if plan.inputs["store"].root.exists():
            shutil.rmtree(plan.inputs["store"].root)

    def forget(self, plan: Plan) -> None:
        """`store.json` says `complete: false` until `record` (a resumed run keeps its shards); a
        store found damaged is marked incomplete and its damaged shards dropped, to be re-embedded.
        A store.json that does not parse is no record: the shards beside it are of unknown origin."""
        store = plan.inputs["store"]
        info = store.read_info()
        if info is None and store.shard_dir.exists():
            shutil.rmtree(store.shard_dir)
        if info is not None and info.get("complete"):
            store.write_info({**{k: v for k, v in info.items() if k != "format_version"}, "complete": False})
        for index in plan.inputs.get("damaged", []):
            paths = store.paths(index)
            for path in (paths.done, paths.emb, paths.meta, paths.pair):
                path.unlink(missing_ok=True)

    def compute(self, plan: Plan) -> Iterator[tuple[int, pa.Table, pa.Table | None, np.ndarray | None, np.ndarray | None]]:
        options, spec, store = plan.recorded, plan.inputs["spec"], plan.inputs["store"]
        set_threads(int(options["threads"]))
        if store.exists():  # resuming: the runtime the store started with, never a new measurement
            identity = store.info["encoder"]
            encoder = TextEncoder(name=options["encoder"], dtype=identity.get("dtype", "float32"),
                                  backend=identity.get("backend", "torch"), max_seq_length=options["max_seq_length"],
                                  batch_size=int(options["batch_size"]), device=options["device"])
            probe_info = store.info.get("encoder_probe")
        else:
            encoder, probe_info = choose_encoder(options, spec, int(self.config["seed"]), self.show_progress)
        plan.inputs["encoder"] = encoder
        plan.inputs["base_info"] = {
            "fingerprint": plan.fingerprint,
            "encoder": encoder.identity() if not store.exists() else store.info["encoder"],
            "encoder_probe": probe_info,
            "dim": encoder.dim, "normalized": True, "metric": "inner_product",
            "shard_rows": int(options["shard_rows"]), "text_column": spec.text_column,
            "pair_column": spec.pair_column,
            "id_column": spec.id_column, "keep_columns": list(spec.keep_columns),
            "inputs": [str(p) for p, _ in resolve_files(spec)], "complete": False}
        return encode_shards(encoder, spec, store, int(options["batch_size"]), int(options["shard_rows"]),
                             self.show_progress)

    def write(self, plan: Plan, computed: Iterator[tuple[int, pa.Table, pa.Table | None, np.ndarray | None,
                                                        np.ndarray | None]]) -> dict[str, Any]:
        spec, store, encoder = plan.inputs["spec"], plan.inputs["store"], plan.inputs["encoder"]
        store.clean_temps()
        rows = shards = encoded = 0
        started, busy_before = time.perf_counter(), encoder.stats["forward_seconds"]

        def write_shard(index: int, meta: pa.Table, vectors: np.ndarray, pair_vectors: np.ndarray | None) -> None:
            crash_point("embed.before_shard_write")
            if not store.exists():  # first output: nothing is written before the first shard is ready
                store.write_info(plan.inputs["base_info"])
            store.write_shard(index, vectors, meta, pair_vectors)
            crash_point("embed.shard")

        with WriteBehind() as writer:  # the previous shard is written while the next one encodes
            for index, table, meta, vectors, pair_vectors in computed:
                rows += table.num_rows
                shards += 1
                if vectors is None:  # done by an earlier run
                    continue
                if OVERLAP:
                    writer.submit(lambda a=(index, meta, vectors, pair_vectors): write_shard(*a))
                else:
                    write_shard(index, meta, vectors, pair_vectors)
                encoded += table.num_rows
        if rows == 0:
            raise AlbatError(f"{', '.join(map(str, spec.paths))}: the corpus holds no rows; check the input")
        _check_unique_ids(store.write_id_index(), spec)
        busy = encoder.stats["forward_seconds"] - busy_before
        return {"rows": rows, "shards": shards, "encoded_rows": encoded, "runtime": f"{encoder.backend}/{encoder.dtype}",
                "encoder_busy": round(busy / (time.perf_counter() - started), 3) if encoded else None}

    def record(self, plan: Plan, summary: dict[str, Any]) -> None:
        store = plan.inputs["store"]
        store.write_info({**{k: v for k, v in store.info.items() if k != "format_version"},
                          "rows": summary["rows"], "shards": summary["shards"], "complete": True,
                          "ids_sha256": store.id_index_checksums()})


def encode_shards(encoder: TextEncoder, spec: CorpusSpec, store: EmbeddingStore, batch_size: int, shard_rows: int,
                  show_progress: bool) -> Iterator[tuple[int, pa.Table, pa.Table | None, np.ndarray | None, np.ndarray | None]]:
    """(shard index, rows, metadata, vectors, pair vectors) for every shard, encoded lazily; all but
    the rows are None for a shard an earlier run already wrote. Reading, regrouping, hashing and
    building the metadata run one shard ahead on a helper thread (`OVERLAP`)."""
    chunk = max(batch_size * 8, 512)
    encoder.prefetch = None if OVERLAP else False

    def planned() -> Iterator[tuple[int, pa.Table, pa.Table | None]]:
        for index, table in shard_tables(iter_batches(spec, batch_rows=chunk), shard_rows):
            yield index, table, (None if store.is_done(index) else build_metadata(table, spec))

    with progress_bar(total=count_rows(spec), desc="embed", enabled=show_progress) as bar:
        for index, table, meta in (prefetched(planned(), depth=1) if OVERLAP else planned()):
            if meta is None:
                bar.update(table.num_rows)
                yield index, table, None, None, None
                continue
            vectors = encode_sorted(encoder, table.column(spec.text_column).to_pylist(), chunk, bar.update)
            pair_vectors = (encode_sorted(encoder, table.column(spec.pair_column).to_pylist(), chunk)
                            if spec.pair_column else None)
            yield index, table, meta, vectors, pair_vectors


def run_embed(config: dict[str, Any], work: Workdir, force: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """The embed stage through the stage runner (pipeline.stage.run_stage)."""
    return run_stage(EmbedStage(config, work, show_progress=show_progress, force=force))


def _check_unique_ids(sorted_ids: np.ndarray, spec: CorpusSpec) -> None:
    repeated = np.nonzero(sorted_ids[1:] == sorted_ids[:-1])[0]
    if len(repeated):
        dup = int(sorted_ids[repeated[0]])
        count = int(np.sum(sorted_ids == dup))
        raise AlbatError(f"id {dup} appears {count} times in column '{spec.id_column}' "
                         f"of {', '.join(map(str, spec.paths))}; ids must be unique (fix them, or drop "
                         "--id-column to use row numbers), then rerun with --force")
