"""Stage 1, embed: stream the backbone corpus through the encoder into the embedding store."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from albat.pipeline.encoders import TextEncoder, set_threads
from albat.pipeline.prefetch import WriteBehind, prefetched
from albat.pipeline.progress import log, progress_bar
from albat.pipeline.shards import ShardTask, plan_shards
from albat.pipeline.shard_map import executor_settings
from albat.pipeline.stage import Plan, Stage, run_stage
from albat.stores.corpus import (CorpusSpec, FileCount, count_rows, input_signature, iter_batches, iter_file,
                                 resolve_files, scan_corpus)
from albat.stores.embedding_store import ID, RESERVED, ROW, SOURCE, TEXT_HASH, EmbeddingStore, text_hash
from albat.stores.errors import AlbatError
from albat.stores.faults import crash_point
from albat.stores.workdir import Workdir, fingerprint


def corpus_spec(options: dict[str, Any]) -> CorpusSpec:
    spec = CorpusSpec(paths=list(options["input"]), text_column=options["text_column"],
                      id_column=options["id_column"], keep_columns=tuple(options["keep_columns"]),
                      format=options["format"], skip_empty=bool(options["skip_empty"]),
                      pair_column=options["pair_column"] or None,
                      max_text_bytes=int(options.get("max_text_bytes") or 0),
                      chat_template=options.get("chat_template") or "lines")
    for col in spec.columns:
        if col in RESERVED:
            raise AlbatError(f"column '{col}' collides with albat's own metadata; rename it in the corpus")
    return spec


def checked_counts(spec: CorpusSpec) -> list[FileCount]:
    """`scan_corpus` (the pre-read that refuses bad input) with a progress bar; its total is known
    up front only for Parquet (row counts in the footers), else the bar shows rows and rate."""
    files = resolve_files(spec)
    total = count_rows(spec) if files and all(fmt == "parquet" for _, fmt in files) else None
    with progress_bar(total=total, desc="embed: reading the corpus") as bar:
        return scan_corpus(spec, on_rows=bar.update)


# where and how fast the shards are encoded, not what they hold: a store is the same whichever ran it
EXECUTION_OPTIONS = ("executor", "ray_address", "ray_cpus", "ray_actors", "ray_actor_cpus", "ray_actor_gpus", "threads")


def recorded_options(options: dict[str, Any]) -> dict[str, Any]:
    """The embed options store.json records (the manifest's embed config): all but the executor's."""
    return {k: v for k, v in options.items() if k not in EXECUTION_OPTIONS}


def embed_fingerprint(options: dict[str, Any], spec: CorpusSpec) -> str:
    chat = [spec.chat_template] if spec.chat_template != "lines" else []  # stores before chat rows keep their print
    return fingerprint({"spec": [spec.columns, spec.text_column, spec.id_column, spec.format, spec.skip_empty, *chat],
                        "inputs": input_signature(spec), "encoder": options["encoder"],
                        "dtype": options["dtype"], "backend": options["backend"],
                        "max_seq_length": options["max_seq_length"],
                        "shard_rows": options["shard_rows"]})


def read_task(spec: CorpusSpec, task: ShardTask, batch_rows: int) -> pa.Table:
    """A shard's rows, read from only the files and row ranges it covers, with source, row and the
    stream position (the default id) added."""
    tables, position = [], task.position
    for part in task.ranges:
        for batch in iter_file(spec, part.source, part.format, batch_rows, part.start, part.stop):
            n = batch.table.num_rows
            table = batch.table.append_column(SOURCE, pa.array([batch.source] * n, pa.string()).dictionary_encode())
            table = table.append_column(ROW, batch.rows)
            tables.append(table.append_column("__position", pa.array(np.arange(position, position + n), pa.int64())))
            position += n
    if position - task.position != task.rows:
        raise AlbatError(f"{', '.join(p.source for p in task.ranges)}: changed while albat read it "
                         f"(shard {task.shard} expected {task.rows} rows); rerun with --force")
    return pa.concat_tables(tables, promote_options="permissive").combine_chunks()


def build_metadata(table: pa.Table, spec: CorpusSpec) -> pa.Table:
    """The stored metadata: albat columns first, then the user's columns under their own names."""
    texts = spec.texts(table)
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
        texts.extend(spec.texts(batch.table))
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
    from albat.pipeline import encoder_probe as probe
    from albat.pipeline.encoder_backends import onnx_available
    from albat.pipeline.encoders import resolve_device

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
    cached = probe_cache_file(options, device, runtimes) if options["probe_cache"] and key not in _PROBED else None
    if cached is not None and (table := probe.load_cached(cached)) is not None:
        _PROBED[key] = ((table["choice"]["backend"], table["choice"]["dtype"]), {**table, "cached": str(cached)})
        log.log(logging.INFO if show else logging.DEBUG, "embed: encoder runtime %s/%s, as timed on this machine "
                "before (%s; --probe-cache false times it again)", *_PROBED[key][0], cached)
    if key not in _PROBED:
        texts = probe_sample(spec, int(options["probe_rows"]), seed)
        choice, rows = probe.run_probe(texts, make, runtimes)
        _PROBED[key] = (choice, probe.probe_table(choice, rows, len(texts), seed))
        log.log(logging.INFO if show else logging.DEBUG,
                "embed: encoder runtimes timed on %d corpus texts:\n%s", len(texts), probe.format_table(rows, choice))
        save_probe(cached or probe_cache_file(options, device, runtimes), _PROBED[key][1])
    choice, table = _PROBED[key]
    return make(*choice), table


def probe_cache_file(options: dict[str, Any], device: str, runtimes: list[tuple[str, str]]) -> Path:
    """Where this machine's probe table for these settings is kept (`encoder_probe` module docstring)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from albat.pipeline import encoder_probe as probe
    from albat.pipeline.encoder_backends import cache_dir, model_content_hash
    from albat.pipeline.encoders import resolve_encoder_path

    path = resolve_encoder_path(options["encoder"])
    versions = {}
    for package in ("torch", "sentence-transformers", "onnxruntime"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    try:
        cpu = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpu = ""
    fields = {"encoder": options["encoder"], "model": model_content_hash(Path(path)) if Path(path).is_dir() else path,
              "device": device, "max_seq_length": options["max_seq_length"], "batch_size": int(options["batch_size"]),
              "threads": torch.get_num_threads(), "runtimes": runtimes, "versions": versions,
              "cpu": [probe.cpu_model(cpu), sorted(probe.cpu_flags(cpu))], "probe_rows": int(options["probe_rows"])}
    return cache_dir() / "encoder-probe" / f"{probe.cache_key(fields)}.json"


def save_probe(path: Path, table: dict[str, Any]) -> None:
    """Keep the probe table for the next run; a cache that cannot be written only costs the next probe."""
    from albat.stores.atomic import write_json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, table)
    except OSError as exc:
        log.debug("embed: encoder probe not cached (%s)", exc)


class EmbedStage(Stage):
    """Its completion record is the store's own `store.json` (`complete`), and it resumes: shards
    already written by a killed run are kept. A store built from other inputs is refused unless
    `force`, which deletes it once the new input has been read through."""
    name = "embed"

    def plan(self) -> Plan:
        options = self.config["embed"]
        if options["modality"] == "image":
            return self._plan_image(options)
        spec = corpus_spec(options)
        store = EmbeddingStore(self.work.store)
        files = None
        if self.force or not store.exists():
            files = checked_counts(spec)  # bad input is refused before anything is written (or deleted)
        return Plan(embed_fingerprint(options, spec), (store.info_path,), options,
                    {"spec": spec, "store": store, "files": files})

    def _plan_image(self, options: dict[str, Any]) -> Plan:
        from albat.pipeline import image_embed

        if executor_settings(self.config)["executor"] != "local":
            raise AlbatError("--modality image embeds with --executor local only (ray: not yet)")
        spec = image_embed.image_spec(options)
        store = EmbeddingStore(self.work.store)
        files = image_embed.scan_images(spec) if self.force or not store.exists() else None
        return Plan(image_embed.image_fingerprint(options, spec), (store.info_path,), options,
                    {"spec": spec, "store": store, "files": files, "modality": "image"})

    def _compute_image(self, plan: Plan) -> Iterator[tuple[int, int, Any, Any, Any]]:
        from albat.pipeline import image_embed

        options, spec, store = plan.recorded, plan.inputs["spec"], plan.inputs["store"]
        encoder = image_embed.make_image_encoder(options)
        plan.inputs["encoder"] = encoder
        files = plan.inputs["files"] or _recorded_files(store) or image_embed.scan_images(spec)
        plan.inputs["tasks"] = plan_shards(files, int(options["shard_rows"]))
        plan.inputs["base_info"] = {
            "fingerprint": plan.fingerprint, "normalized": True, "metric": "inner_product",
            "shard_rows": int(options["shard_rows"]),
            **(image_embed.image_base_info(encoder, spec, options) if not store.exists()
               else {k: store.info[k] for k in ("modality", "encoder", "encoder_probe", "dim", "text_column",
                                                "pair_column", "image_column", "id_column", "keep_columns", "inputs")}),
            "files": [list(f) for f in files], "complete": False}
        return image_embed.encode_image_shards(encoder, spec, store, plan.inputs["tasks"],
                                               int(options["image_workers"]), self.show_progress)

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

    def compute(self, plan: Plan) -> Iterator[tuple[int, int, pa.Table | None, np.ndarray | None, np.ndarray | None]]:
        options, spec, store = plan.recorded, plan.inputs["spec"], plan.inputs["store"]
        set_threads(int(options["threads"]))
        if plan.inputs.get("modality") == "image":
            return self._compute_image(plan)
        if store.exists():  # resuming: the runtime the store started with, never a new measurement
            identity = store.info["encoder"]
            encoder = TextEncoder(name=options["encoder"], dtype=identity.get("dtype", "float32"),
                                  backend=identity.get("backend", "torch"), max_seq_length=options["max_seq_length"],
                                  batch_size=int(options["batch_size"]), device=options["device"])
            probe_info = store.info.get("encoder_probe")
        else:
            encoder, probe_info = choose_encoder(options, spec, int(self.config["seed"]), self.show_progress)
        plan.inputs["encoder"] = encoder
        files = plan.inputs["files"] or _recorded_files(store) or checked_counts(spec)
        plan.inputs["tasks"] = plan_shards(files, int(options["shard_rows"]))
        plan.inputs["base_info"] = {
            "fingerprint": plan.fingerprint,
            "encoder": encoder.identity() if not store.exists() else store.info["encoder"],
            "encoder_probe": probe_info,
            "dim": encoder.dim, "normalized": True, "metric": "inner_product",
            "shard_rows": int(options["shard_rows"]), "text_column": spec.text_column,
            "chat_template": spec.chat_template,
            "pair_column": spec.pair_column,
            "id_column": spec.id_column, "keep_columns": list(spec.keep_columns),
            "inputs": [source for source, _ in resolve_files(spec)], "files": [list(f) for f in files],
            "config": recorded_options(options), "seed": int(self.config["seed"]),  # what the manifest reports
            "complete": False}
        executor = executor_settings(self.config)
        if executor["executor"] == "ray":  # lazy: the actors start when `write` drains it
            from albat.pipeline.ray_executor import embed_on_ray, start_ray

            todo = [t for t in plan.inputs["tasks"] if not store.is_done(t.shard)]
            if todo:  # Ray missing or unreachable is refused here, before anything is written
                start_ray(executor["ray_address"], int(executor["ray_cpus"]))
            remote = self.work.remote
            return embed_on_ray(todo, spec, encoder_settings(encoder, options), str(store.root),
                                {**options, **executor}, remote_shards=f"{remote.url}/store/shards" if remote else None)
        return encode_shards(encoder, spec, store, plan.inputs["tasks"], int(options["batch_size"]), self.show_progress)

    def write(self, plan: Plan, computed: Iterator[tuple[int, int, pa.Table | None, np.ndarray | None,
                                                        np.ndarray | None]]) -> dict[str, Any]:
        spec, store, encoder = plan.inputs["spec"], plan.inputs["store"], plan.inputs["encoder"]
        store.clean_temps()
        if executor_settings(self.config)["executor"] == "ray":
            return self._write_ray(plan, computed)
        rows = shards = encoded = 0
        started, busy_before = time.perf_counter(), encoder.stats["forward_seconds"]

        def write_shard(index: int, meta: pa.Table, vectors: np.ndarray, pair_vectors: np.ndarray | None) -> None:
            crash_point("embed.before_shard_write")
            if not store.exists():  # first output: nothing is written before the first shard is ready
                store.write_info(plan.inputs["base_info"])
            store.write_shard(index, vectors, meta, pair_vectors)
            crash_point("embed.shard")

        with WriteBehind() as writer:  # the previous shard is written while the next one encodes
            for index, shard_rows, meta, vectors, pair_vectors in computed:
                rows += shard_rows
                shards += 1
                if vectors is None:  # done by an earlier run
                    continue
                if OVERLAP:
                    writer.submit(lambda a=(index, meta, vectors, pair_vectors): write_shard(*a))
                else:
                    write_shard(index, meta, vectors, pair_vectors)
                encoded += shard_rows
        busy = encoder.stats["forward_seconds"] - busy_before
        return self._finish(plan, rows, shards, encoded, round(busy / (time.perf_counter() - started), 3) if encoded else None)

    def _write_ray(self, plan: Plan, computed: Iterator[tuple[int, int, int]]) -> dict[str, Any]:
        """The ray executor's shards are written by its actors; the driver writes `store.json` first
        and counts what they report."""
        store, tasks = plan.inputs["store"], plan.inputs["tasks"]
        if not store.exists() and tasks:
            store.write_info(plan.inputs["base_info"])
        if self.work.remote is not None:  # the description first: the shards the actors put are then attributed
            self.work.remote.push()
        encoded = 0
        for _, _, encoded_rows in computed:
            encoded += encoded_rows
            crash_point("embed.ray_shard")
        if self.work.remote is not None:  # the actors put their shards on the remote: fetch them for the id index
            self.work.remote.pull("store/shards")
        missing = [t.shard for t in tasks if not store.is_done(t.shard)]
        if missing:
            raise AlbatError(f"{store.root}: the ray executor left shards {missing[:5]} unwritten; rerun `albat embed`")
        return self._finish(plan, sum(t.rows for t in tasks), len(tasks), encoded, None)

    def _finish(self, plan: Plan, rows: int, shards: int, encoded: int, busy: float | None) -> dict[str, Any]:
        spec, store, encoder = plan.inputs["spec"], plan.inputs["store"], plan.inputs["encoder"]
        if rows == 0:
            raise AlbatError(f"{', '.join(map(str, spec.paths))}: the corpus holds no rows; check the input")
        _check_unique_ids(store.write_id_index(), spec)
        return {"rows": rows, "shards": shards, "encoded_rows": encoded, "runtime": f"{encoder.backend}/{encoder.dtype}",
                "encoder_busy": busy}

    def record(self, plan: Plan, summary: dict[str, Any]) -> None:
        store = plan.inputs["store"]
        report = {}
        if plan.inputs.get("modality") == "image":  # the broken images every shard left out
            from albat.pipeline.image_embed import image_report

            report = {"image_report": image_report(store)}
            summary["skipped_images"] = report["image_report"]["skipped"]
        store.write_info({**{k: v for k, v in store.info.items() if k != "format_version"},
                          "rows": summary["rows"], "shards": summary["shards"], "complete": True,
                          "ids_sha256": store.id_index_checksums(), **report})


def prepare_task(spec: CorpusSpec, task: ShardTask, chunk: int) -> tuple[pa.Table, pa.Table]:
    """A shard's rows and its stored metadata (everything but the encoding)."""
    table = read_task(spec, task, chunk)
    return table, build_metadata(table, spec)


def encode_table(encoder: TextEncoder, spec: CorpusSpec, table: pa.Table, chunk: int,
                 on_progress: Callable[[int], object] = lambda _: None) -> tuple[np.ndarray, np.ndarray | None]:
    """The vectors of a shard's text column, and of its pair column when there is one."""
    vectors = encode_sorted(encoder, spec.texts(table), chunk, on_progress)
    pair_vectors = (encode_sorted(encoder, spec.texts(table, spec.pair_column), chunk)
                    if spec.pair_column else None)
    return vectors, pair_vectors


def embed_task(encoder: TextEncoder, spec: CorpusSpec, task: ShardTask,
               batch_size: int) -> tuple[pa.Table, np.ndarray, np.ndarray | None]:
    """One shard, start to end: (metadata, vectors, pair vectors), exactly what the sequential run
    stores for it. Any executor may call it for any task, in any order."""
    chunk = encode_chunk(batch_size)
    table, meta = prepare_task(spec, task, chunk)
    return (meta, *encode_table(encoder, spec, table, chunk))


def encode_chunk(batch_size: int) -> int:
    """Texts handed to the encoder at once (sorted by length within a chunk)."""
    return max(batch_size * 8, 512)


def encode_shards(encoder: TextEncoder, spec: CorpusSpec, store: EmbeddingStore, tasks: list[ShardTask],
                  batch_size: int, show_progress: bool) -> Iterator[tuple[int, int, pa.Table | None, np.ndarray | None,
                                                                          np.ndarray | None]]:
    """The local executor: (shard index, rows, metadata, vectors, pair vectors) for every task, in
    order, encoded lazily; metadata and vectors are None for a shard an earlier run already wrote.
    Reading, hashing and building the metadata run one shard ahead on a helper thread (`OVERLAP`)."""
    chunk = encode_chunk(batch_size)
    encoder.prefetch = None if OVERLAP else False

    def planned() -> Iterator[tuple[ShardTask, tuple[pa.Table, pa.Table] | None]]:
        for task in tasks:
            yield task, (None if store.is_done(task.shard) else prepare_task(spec, task, chunk))

    with progress_bar(total=sum(t.rows for t in tasks), desc="embed", enabled=show_progress) as bar:
        for task, prepared in (prefetched(planned(), depth=1) if OVERLAP else planned()):
            if prepared is None:
                bar.update(task.rows)
                yield task.shard, task.rows, None, None, None
                continue
            table, meta = prepared
            yield (task.shard, task.rows, meta, *encode_table(encoder, spec, table, chunk, bar.update))


def encoder_settings(encoder: TextEncoder, options: dict[str, Any]) -> dict[str, Any]:
    """What another process needs to build the same encoder (`TextEncoder(**settings)`)."""
    return {"name": encoder.name, "dtype": encoder.dtype, "backend": encoder.backend,
            "max_seq_length": encoder.max_seq_length, "batch_size": encoder.batch_size, "device": options["device"]}


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


def _recorded_files(store: EmbeddingStore) -> list[FileCount] | None:
    """The per-file row counts a resumed store recorded (its fingerprint ties them to the inputs)."""
    files = store.info.get("files") if store.exists() else None
    return [FileCount(*f) for f in files] if files else None
