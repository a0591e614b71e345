"""Deterministic crash points for the resume tests: `ALBAT_KILL_AT=embed.shard:2` SIGKILLs the
process the second time that point is reached. Costs one environment lookup when unset."""
from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get("ALBAT_KILL_AT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
