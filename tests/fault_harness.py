"""Run `albat` in child processes forked from a server that has already imported torch,
sentence-transformers, FAISS and DuckDB (multiprocessing's forkserver with preloaded modules): the
fault suite's hundreds of runs each start in milliseconds instead of seconds. Every run is still a
separate process that SIGKILL kills whole, holding its own lock and file handles."""
from __future__ import annotations

import multiprocessing
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from albat.stores.faults import KILL_ENV, TRACE_ENV

PRELOAD = ["torch", "sentence_transformers", "faiss", "duckdb", "albat.pipeline.cli", "albat.pipeline.embed",
           "albat.pipeline.index", "albat.pipeline.query", "albat.pipeline.filter", "albat.pipeline.emit", "albat.pipeline.verify"]


@dataclass
class Outcome:
    exitcode: int  # -9 when killed by SIGKILL
    output: str  # stdout and stderr together


def _child(argv: list[str], env: dict[str, str], log: str) -> None:
    for key in (KILL_ENV, TRACE_ENV):
        os.environ.pop(key, None)
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from albat.pipeline.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Runner:
    def __init__(self, log_dir: Path):
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)
        self.log = Path(log_dir) / "child.log"

    def run(self, *argv: object, kill_at: str | None = None, trace: Path | None = None, timeout: float = 300) -> Outcome:
        env = {"HF_HUB_OFFLINE": "1"}
        if kill_at:
            env[KILL_ENV] = kill_at
        if trace:
            env[TRACE_ENV] = str(trace)
        proc = self.ctx.Process(target=_child, args=([str(a) for a in argv], env, str(self.log)))
        proc.start()
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
            raise TimeoutError(f"albat {' '.join(map(str, argv))} ran past {timeout}s")
        return Outcome(proc.exitcode, self.log.read_text())
