"""Torch thread counts, chosen per kind of work.

The encoder's large matmuls use every core (`embed.threads`, 0 = all). The surrogates' small ops
(a 384×384 adapter on batches of 64, a few hundred steps) do not: OpenMP's fork-join costs more than
the work, and when another process shares the cores the waiting threads spin. Measured on the demo
work directory (2 cores, another job running): `albat filter --method albat` fitted the contrastive
surrogate in 4.6 s on 1 thread against 43 s on 2 (BENCHMARKS.md, "Filter stage"). So the filter
stage runs methods on `SMALL_OP_THREADS`, and the `lm` surrogate, whose matmuls are large, on all
cores.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

SMALL_OP_THREADS = 1


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads if threads > 0 else (os.cpu_count() or 1))


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block on `threads` torch threads (0: all cores), then restore the previous count;
    None leaves torch alone (and unimported)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    set_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


NO_TORCH_METHODS = {"none", "random", "knn", "dsir", "classifier"}


def filter_threads(options: dict[str, Any]) -> int | None:
    """Threads for a selection method: `threads` when set, else all cores for the lm surrogate and
    `SMALL_OP_THREADS` for the other torch work; None for methods that never touch torch."""
    if options.get("method") in NO_TORCH_METHODS:
        return None
    if options.get("threads") is not None:
        return int(options["threads"])
    return 0 if options.get("surrogate") == "lm" else SMALL_OP_THREADS
