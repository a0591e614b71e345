"""Deterministic crash points for the fault-injection tests.

`ALBAT_KILL_AT=embed.shard:2` SIGKILLs the process the second time that point is reached;
`ALBAT_KILL_AT=*:37` at the 37th crash point of any name. `ALBAT_FAULT_TRACE=FILE` appends the
name of every point reached to FILE, so a test can count a stage's points in an uninterrupted run
and then kill it at seeded positions among them.

Points sit before and after every rename that publishes a file (`rename:NAME`, `renamed:NAME`),
around each directory swap, at the stages' own milestones, and, while fault injection is on,
between the pieces (at most `CHUNK` bytes each) of every shard, table, array and index write
(`write:NAME`), so a kill can land with a file half-written. All of it costs one environment
lookup when neither variable is set.
"""
from __future__ import annotations

import io
import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

KILL_ENV = "ALBAT_KILL_AT"
TRACE_ENV = "ALBAT_FAULT_TRACE"
CHUNK = 16 * 1024

_hits: dict[str, int] = {}


def active() -> bool:
    return bool(os.environ.get(KILL_ENV) or os.environ.get(TRACE_ENV))


def crash_point(name: str) -> None:
    spec, trace = os.environ.get(KILL_ENV), os.environ.get(TRACE_ENV)
    if not spec and not trace:
        return
    if trace:
        with open(trace, "a") as fh:
            fh.write(name + "\n")
    if not spec:
        return
    point, _, nth = spec.rpartition(":")
    if not nth.isdigit():  # `point` alone means its first hit
        point, nth = spec, "1"
    if point not in (name, "*"):
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] == int(nth):
        os.kill(os.getpid(), signal.SIGKILL)


class _CrashingWriter(io.RawIOBase):
    """A binary file whose writes go out in pieces, with a crash point before each piece."""

    def __init__(self, fh: IO[bytes], name: str):
        self._fh, self._name = fh, name

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        for start in range(0, len(view), CHUNK):
            crash_point(f"write:{self._name}")
            self._fh.write(view[start:start + CHUNK])
            self._fh.flush()
        return len(view)


@contextmanager
def output_file(path: Path, name: str) -> Iterator[IO[bytes]]:
    """Open `path` (the temporary of file `name`) for binary writing; under fault injection,
    writes can be killed part-way."""
    with open(path, "wb") as fh:
        yield _CrashingWriter(fh, name) if active() else fh
