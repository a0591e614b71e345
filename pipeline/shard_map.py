"""Map a function over every store shard, here or on Ray Data, and get the results in shard order.

    map_shards(fn, store, kwargs, executor) -> [(shard, fn(store, shard, **kwargs)), ...]

`fn` takes the store and one shard index and returns a dict of NumPy arrays (what the shard
contributes: matching rows, counts, a shard's top keys); it must not depend on any other shard.
`executor` is the run's `executor`, `ray_address` and `ray_cpus` (`executor_settings`): "local"
loops here, "ray" sends one shard per Ray Data row (`pipeline.ray_executor.map_shards_on_ray`).
Either way the caller gets the same results, in shard order, so it combines them the same way
and its output is byte-identical whichever executor ran (tests/test_ray_scans.py).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from albat.stores.embedding_store import EmbeddingStore

ShardFn = Callable[..., dict[str, np.ndarray]]
LOCAL = {"executor": "local", "ray_address": None, "ray_cpus": 0}


def executor_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The run's executor options (top level of the config); local when the config has none.
    `remote_store`: the store's URL when the work directory is one (stores.remote), where Ray
    workers fetch the shards they scan; None for a local work directory."""
    from albat.stores.remote import is_work_url

    work = config.get("work")
    return {**{k: config.get(k, v) for k, v in LOCAL.items()},
            "remote_store": f"{work.rstrip('/')}/store" if is_work_url(work) else None}


def map_shards(fn: ShardFn, store: EmbeddingStore, kwargs: dict[str, Any], executor: dict[str, Any] | None = None,
               desc: str | None = None) -> list[tuple[int, dict[str, np.ndarray]]]:
    """`desc`: the progress bar of the local loop (rows of the shards done)."""
    shards = store.shard_indices()
    executor = executor or LOCAL
    if executor["executor"] == "ray" and shards:
        from albat.pipeline.ray_executor import map_shards_on_ray

        return map_shards_on_ray(fn, str(store.root), shards, kwargs, executor)
    from albat.pipeline.progress import progress_bar

    rows = dict(zip(shards, store.row_counts()))
    out = []
    with progress_bar(total=int(sum(rows.values())), desc=desc or fn.__name__) as bar:
        for shard in shards:
            out.append((shard, fn(store, shard, **kwargs)))
            bar.update(rows[shard])
    return out
