"""Keep the encoder busy: read ahead on one thread, write behind on another.

`prefetched(items, depth)` runs an iterator on a background thread, at most `depth` items ahead
(memory stays bounded), and re-raises its exception in the consumer. `WriteBehind` runs writes in
submission order on one thread, at most one pending, so the next batch encodes while the last one
is written; an error surfaces at the next `submit` or at `close`.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


def prefetched(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    slots: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((_DONE, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            slots.put((_DONE, exc))

    worker = threading.Thread(target=produce, name="albat-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # drain so a blocked producer can see `stop`
            try:
                slots.get(timeout=0.1)
            except queue.Empty:
                pass


class WriteBehind:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="albat-write")
        self._pending: Future | None = None

    def submit(self, write: Callable[[], object]) -> None:
        self.wait()
        self._pending = self._pool.submit(write)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "WriteBehind":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:  # the consumer failed: let the last write finish, report the consumer's error
            try:
                self.close()
            except Exception:  # noqa: BLE001
                pass
