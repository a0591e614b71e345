"""Read-ahead and write-behind keep order, stay bounded, and never swallow an error; the filter
stage's thread choice restores torch's count."""
from __future__ import annotations

import threading
import time

import pytest

from albat.pipeline.prefetch import WriteBehind, prefetched
from albat.pipeline.threads import filter_threads, torch_threads


def test_prefetched_keeps_order_and_reads_at_most_depth_ahead() -> None:
    produced: list[int] = []

    def items():
        for i in range(6):
            produced.append(i)
            yield i

    seen = []
    for item in prefetched(items(), depth=1):
        time.sleep(0.02)
        assert len(produced) <= item + 3  # the one consumed, one queued, one being produced
        seen.append(item)
    assert seen == list(range(6))


def test_prefetched_reraises_the_producers_error_and_stops_early() -> None:
    def broken():
        yield 1
        raise ValueError("bad row 7 in corpus.parquet")

    with pytest.raises(ValueError, match="bad row 7"):
        list(prefetched(broken()))
    endless = prefetched(iter(range(10**9)), depth=2)
    assert next(endless) == 0
    endless.close()  # the producer thread stops instead of running on

    def producing() -> bool:
        return any(t.name == "albat-prefetch" and t.is_alive() for t in threading.enumerate())

    deadline = time.monotonic() + 10.0  # a loaded machine may take a while to schedule it; a live one never stops
    while producing() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not producing()


def test_write_behind_runs_in_order_and_surfaces_errors() -> None:
    done: list[int] = []
    with WriteBehind() as writer:
        for i in range(5):
            writer.submit(lambda i=i: (time.sleep(0.01), done.append(i)))
    assert done == list(range(5))
    writer = WriteBehind()
    writer.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        writer.submit(lambda: None)
    writer.close()


def test_filter_threads_and_restore() -> None:
    import torch

    assert filter_threads({"method": "knn"}) is None
    assert filter_threads({"method": "albat"}) == 1
    assert filter_threads({"method": "albat", "surrogate": "lm"}) == 0
    assert filter_threads({"method": "albat", "surrogate": "lm", "threads": 1}) == 1  # filter.threads wins
    assert filter_threads({"method": "albat", "threads": 0}) == 0
    assert filter_threads({"method": "knn", "threads": 2}) is None  # no torch, nothing to set
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
