"""benchmarks/peakmem.py, the anonymous-memory peak bench-scale reports beside ru_maxrss: it sees an
allocation that is freed before it stops, and it does not count a memory-mapped file's pages."""
from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from benchmarks.peakmem import PeakAnon, anon_kib

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RssAnon is Linux's /proc")


def test_a_freed_allocation_is_in_the_peak():
    peak = PeakAnon(interval=0.005).start()
    before = anon_kib()
    block = np.ones(200 * 2**20 // 8)  # 200 MiB, written, so resident
    time.sleep(0.1)
    del block
    assert anon_kib() - before < 100 * 1024  # freed again
    assert peak.stop() - before > 180 * 1024


def test_mapped_file_pages_are_not_anonymous(tmp_path):
    path = tmp_path / "big.npy"
    np.save(path, np.ones(200 * 2**20 // 8))
    peak = PeakAnon(interval=0.005).start()
    before = anon_kib()
    mapped = np.load(path, mmap_mode="r")
    assert float(mapped.sum()) == len(mapped)  # every page read
    time.sleep(0.05)
    assert peak.stop() - before < 50 * 1024
