"""Peak anonymous memory of this process, sampled. `ru_maxrss` also counts file-backed pages (the
memory-mapped store shards, FAISS's on-disk inverted lists) that the kernel reclaims under pressure;
`RssAnon` (Linux, /proc/self/status) is the memory the process itself holds. Sampled every
`interval` seconds on a daemon thread, so a spike shorter than that can be missed. Imports nothing
of albat (the autofaiss child uses it too)."""
from __future__ import annotations

import threading
import time


def anon_kib() -> int:
    """This process's resident anonymous memory now, KiB (0 where /proc is not Linux's)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakAnon:
    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self._done = interval, anon_kib(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, anon_kib())

    def start(self) -> "PeakAnon":
        self._thread.start()
        return self

    def stop(self) -> int:
        """The peak seen, KiB (one last sample included)."""
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, anon_kib())
        return self.peak
