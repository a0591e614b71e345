"""The ray executor: embed shard tasks on Ray Data (`--executor ray`).

    tasks -> ray.data.from_items -> map_batches(EncoderActor, concurrency=ray_actors,
                                               num_cpus=ray_actor_cpus, num_gpus=ray_actor_gpus)

Each actor loads the encoder once (the runtime the driver chose or the store started with) and
embeds one task at a time with `pipeline.embed.embed_task`, then writes the shard itself through
`EmbeddingStore.write_shard`: vectors and metadata by rename, the completion record last. So the
store, its shard names and bytes are those of the local executor, a shard with a completion record
is skipped by either executor, and a run killed under one resumes under the other. The driver
writes `store.json` before the first task and the id lookup files and `complete` after the last.
Workers must see the work directory at the same path (one machine, or a shared file system), unless
the work directory is a URL (`--work s3://...`, stores.remote): then each actor writes its shard in a
scratch folder of its own and puts the files on the remote, the completion record last.

`map_shards_on_ray` runs a per-shard function of the corpus scans (the query stage's exact
duplicates, dsir's two passes; `pipeline.shard_map`) as Ray Data tasks, one shard a row; each
result travels back as .npz bytes and the driver combines them in shard order. With a remote work
directory each worker fetches the shard it scans from the remote (`stores.remote.fetch_shard`).
"""
from __future__ import annotations

import io
from dataclasses import asdict
from typing import Any, Callable, Iterator

import numpy as np

from albat.pipeline.shards import ShardTask
from albat.stores.corpus import CorpusSpec
from albat.stores.errors import AlbatError


class EncoderActor:
    """A Ray Data callable class: one encoder per actor, one shard task per batch row."""

    def __init__(self, spec: dict[str, Any], encoder: dict[str, Any], store_root: str, batch_size: int, threads: int,
                 remote_shards: str | None = None):
        from albat.pipeline.encoders import TextEncoder
        from albat.pipeline.threads import set_threads
        from albat.stores.embedding_store import EmbeddingStore

        set_threads(threads)
        self.spec = CorpusSpec(**spec)
        self.encoder = TextEncoder(**encoder)
        self.remote_shards = remote_shards
        if remote_shards:  # a scratch store of this actor's own; each shard goes to the remote when written
            import tempfile

            self._scratch = tempfile.TemporaryDirectory(prefix="albat-actor-")
            store_root = self._scratch.name
        self.store = EmbeddingStore(store_root)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from albat.pipeline.embed import embed_task
        from albat.stores.faults import crash_point

        shards, rows, encoded = [], [], []
        for text in batch["task"]:
            task = ShardTask.from_json(str(text))
            done = self.store.is_done(task.shard)
            if not done:
                meta, vectors, pair_vectors = embed_task(self.encoder, self.spec, task, self.batch_size)
                crash_point("embed.before_shard_write")
                self.store.write_shard(task.shard, vectors, meta, pair_vectors)
                if self.remote_shards:
                    self._put(task.shard)
            shards.append(task.shard)
            rows.append(task.rows)
            encoded.append(0 if done else task.rows)
        return {"shard": np.array(shards, np.int64), "rows": np.array(rows, np.int64),
                "encoded": np.array(encoded, np.int64)}


    def _put(self, shard: int) -> None:
        """The shard's files to the remote store (data first, record last), then out of the scratch folder."""
        from albat.stores.embedding_store import shard_name
        from albat.stores.remote import upload_shard

        upload_shard(self.store.shard_dir, shard_name(shard), self.remote_shards)
        for path in self.store.shard_dir.glob(f"{shard_name(shard)}.*"):
            path.unlink()


def start_ray(address: str | None, cpus: int) -> Any:
    """Connect to the cluster at `address`, or start a local Ray with `cpus` CPUs (0: all)."""
    try:
        import ray
    except ImportError:
        raise AlbatError("--executor ray needs Ray: pip install -c constraints.txt -e '.[ray]' "
                         "(or run `make setup`), or use --executor local") from None
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": cpus or None}
        ray.init(**kwargs, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


def embed_on_ray(tasks: list[ShardTask], spec: CorpusSpec, encoder: dict[str, Any], store_root: str,
                 options: dict[str, Any], remote_shards: str | None = None) -> Iterator[tuple[int, int, int]]:
    """(shard, rows, rows encoded here) per task as the actors finish them (any order); tasks
    already done are counted, not sent. `remote_shards`: the URL the actors put each shard under
    (a remote work directory's `store/shards`), else they write under `store_root`."""
    if not tasks:
        return
    ray = start_ray(options["ray_address"], int(options["ray_cpus"]))
    items = [{"task": t.to_json()} for t in tasks]
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        EncoderActor, batch_size=1, concurrency=int(options["ray_actors"]),
        num_cpus=float(options["ray_actor_cpus"]), num_gpus=float(options["ray_actor_gpus"]) or None,
        fn_constructor_kwargs={"spec": asdict(spec), "encoder": encoder, "store_root": store_root,
                               "batch_size": int(options["batch_size"]), "threads": int(options["threads"]),
                               "remote_shards": remote_shards})
    for row in dataset.iter_rows():
        yield int(row["shard"]), int(row["rows"]), int(row["encoded"])


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    """A shard's result as .npz bytes (read back with allow_pickle=False: arrays only)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return buffer.getvalue()


def unpack(blob: bytes) -> dict[str, np.ndarray]:
    buffer = io.BytesIO(blob)
    with np.load(buffer, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _shard_batch(batch: dict[str, np.ndarray], fn: Callable[..., dict[str, np.ndarray]], store_root: str,
                 kwargs: dict[str, Any], remote_store: str | None = None) -> dict[str, np.ndarray]:
    """A Ray Data batch function: `fn(store, shard, **kwargs)` for each shard index in the batch.
    `remote_store` (a URL): each shard is fetched into a scratch store first (stores.remote)."""
    from albat.stores.embedding_store import EmbeddingStore

    shards = [int(s) for s in batch["shard"]]
    if remote_store is None:
        store = EmbeddingStore(store_root)
        payloads = [pack(fn(store, shard, **kwargs)) for shard in shards]
    else:
        import tempfile

        from albat.stores.remote import fetch_shard

        payloads = []
        for shard in shards:
            with tempfile.TemporaryDirectory(prefix="albat-scan-") as scratch:
                payloads.append(pack(fn(fetch_shard(remote_store, shard, scratch), shard, **kwargs)))
    return {"shard": np.array(shards, np.int64), "payload": np.array(payloads, dtype=object)}


def map_shards_on_ray(fn: Callable[..., dict[str, np.ndarray]], store_root: str, shards: list[int],
                      kwargs: dict[str, Any], executor: dict[str, Any]) -> list[tuple[int, dict[str, np.ndarray]]]:
    """`fn` over each shard as Ray Data tasks (`from_items(shards).map_batches(...)`, one shard a
    row); the results in shard order whatever order the tasks finished in."""
    ray = start_ray(executor["ray_address"], int(executor["ray_cpus"]))
    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards)).map_batches(
        _shard_batch, batch_size=1, num_cpus=1,
        fn_kwargs={"fn": fn, "store_root": store_root, "kwargs": kwargs, "remote_store": executor.get("remote_store")})
    results = {int(row["shard"]): unpack(row["payload"]) for row in dataset.iter_rows()}
    return [(shard, results[shard]) for shard in shards]
