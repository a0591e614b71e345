"""Progress bars (rows, rate, ETA) on stderr, and the `albat` logger.

Bars are on while a stage runs with progress enabled (`--quiet` turns them off; `shown(False)`
does the same for a block of code) and stderr is a terminal: piped or redirected logs stay clean.
Code deep inside a stage (a surrogate's passes, the corpus pre-read) asks `progress_bar` without
being handed a flag: the runner sets it for the stage (`shown`).
"""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Iterable, Iterator

LOG_LEVELS = ("debug", "info", "warning", "error")
log = logging.getLogger("albat")

_enabled = [True]  # the innermost `shown(...)` wins


@contextlib.contextmanager
def shown(enabled: bool) -> Iterator[None]:
    """Within this block, bars are shown only if `enabled` (and stderr is a terminal)."""
    _enabled.append(bool(enabled))
    try:
        yield
    finally:
        _enabled.pop()


def bars_on(enabled: bool | None = None) -> bool:
    """Whether a bar would be drawn now: asked for (default: the enclosing `shown`) and stderr a TTY."""
    wanted = _enabled[-1] if enabled is None else enabled and _enabled[-1]
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(wanted and isatty is not None and isatty())


def progress_bar(total: int | None, desc: str, enabled: bool | None = None, unit: str = "rows") -> Any:
    """A tqdm bar (use it as a context manager, `.update(n)`); a silent one when bars are off."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not bars_on(enabled),
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5, leave=False)


def tracked_slices(slices: Iterable[slice], total: int, desc: str) -> Iterator[slice]:
    """Yield row slices, advancing a bar of `total` rows by each slice's length once it is done."""
    with progress_bar(total=total, desc=desc) as bar:
        previous: slice | None = None
        for s in slices:
            if previous is not None:
                bar.update(previous.stop - previous.start)
            previous = s
            yield s
        if previous is not None:
            bar.update(previous.stop - previous.start)


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a message comes (a test may have replaced it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(level: str = "info") -> None:
    """The `albat` logger writes `albat: LEVEL: message` lines to stderr at `level` and above."""
    log.setLevel(getattr(logging, level.upper()))
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("albat: %(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False


def tracked_range(stop: int, desc: str, unit: str = "steps") -> Iterator[int]:
    """`range(stop)` with a bar of `stop - 1` steps (a loop of n steps that runs to `step == n`)."""
    bar = progress_bar(total=max(stop - 1, 0), desc=desc, unit=unit)
    try:
        for step in range(stop):
            if step:
                bar.update(1)
            yield step
    finally:
        bar.close()
