"""The work directory: where each stage's store lives, its completion records, and the writer lock.

    WORK/store/        embedding store (stores.embedding_store)
    WORK/index/        FAISS index + index_infos.json (stores.index_store)
    WORK/query/        adaptation set, candidates, candidate pairs, blocked ids
    WORK/filter/       selection.parquet
    WORK/output/       emitted shards + manifest.json (stores.shard_store)
    WORK/_stages/      one completion record per stage: the config it ran with and its summary
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from stores.atomic import read_json, write_json
from stores.errors import AlbatError


def fingerprint(config: Any) -> str:
    """Stable digest of the options a stage's output depends on."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Workdir:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.store = self.root / "store"
        self.index = self.root / "index"
        self.query = self.root / "query"
        self.filter = self.root / "filter"
        self.output = self.root / "output"
        self.stages = self.root / "_stages"
        self._lock_fh = None

    def stage_record(self, stage: str) -> dict[str, Any] | None:
        path = self.stages / f"{stage}.json"
        return read_json(path) if path.exists() else None

    def finished_summary(self, stage: str, config_fingerprint: str, output: Path) -> dict[str, Any] | None:
        """The summary of a stage already run with this config whose output is present, else None."""
        record = self.stage_record(stage)
        if record and record.get("fingerprint") == config_fingerprint and Path(output).exists():
            return record["summary"]
        return None

    def mark_stage_done(self, stage: str, config_fingerprint: str, config: Any, summary: dict[str, Any]) -> None:
        write_json(self.stages / f"{stage}.json",
                   {"stage": stage, "fingerprint": config_fingerprint, "config": config, "summary": summary})

    def forget_stage(self, stage: str) -> None:
        (self.stages / f"{stage}.json").unlink(missing_ok=True)

    def lock(self) -> None:
        """Take the single-writer lock; the kernel drops it when the process dies, so a crash never blocks."""
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise AlbatError(f"{self.root}: in use by {holder}; wait for it to finish or use another --work") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._lock_fh = fh

    def unlock(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None
