"""The work directory: where each stage's store lives, its completion records, and the writer lock.

    WORK/store/        embedding store (stores.embedding_store)
    WORK/index/        FAISS index + index_infos.json (stores.index_store)
    WORK/query/        adaptation set, candidates, candidate pairs, blocked ids
    WORK/filter/       selection.parquet
    WORK/output/       emitted shards + manifest.json (stores.shard_store); `emit.output` renames it
    WORK/_stages/      one completion record per stage: the config it ran with and its summary
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from stores.atomic import read_json, sha256_file, write_json
from stores.errors import AlbatError


def fingerprint(config: Any) -> str:
    """Stable digest of the options a stage's output depends on."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


OWN_FOLDERS = ("store", "index", "query", "filter", "_stages")


class Workdir:
    def __init__(self, root: Path | str, output: str | None = None):
        """`output`: the shard set's folder inside `root` (config emit.output); by default the one
        the last emit recorded, else `output`."""
        self.root = Path(root)
        self.store = self.root / "store"
        self.index = self.root / "index"
        self.query = self.root / "query"
        self.filter = self.root / "filter"
        self.stages = self.root / "_stages"
        self.output = self.root / (output or self._recorded_output())
        self._lock_fd: int | None = None
        self._created: list[Path] = []

    def _recorded_output(self) -> str:
        try:
            name = str((self.stage_record("emit") or {})["config"]["output"])
            if not name or name in OWN_FOLDERS:
                return "output"
        except (KeyError, TypeError, ValueError, OSError):
            return "output"
        inside = os.path.realpath(self.root / name).startswith(os.path.realpath(self.root) + os.sep)
        return name if inside else "output"  # a tampered record cannot point readers elsewhere

    def stage_record(self, stage: str) -> dict[str, Any] | None:
        """The stage's completion record; None when there is none or it does not parse as one (a
        truncated or hand-edited record means "not complete": the stage reruns and rewrites it)."""
        path = self.stages / f"{stage}.json"
        try:
            record = read_json(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("stage") != stage or not isinstance(record.get("summary"), dict) \
                or not isinstance(record.get("fingerprint"), str):
            return None
        if "checksum" in record and record.pop("checksum") != _record_checksum(record):
            return None  # edited by hand: its summary or outputs can no longer be trusted
        return record

    def finished_summary(self, stage: str, config_fingerprint: str, *outputs: Path) -> dict[str, Any] | None:
        """The summary of a stage already run with this config whose outputs are all present and
        match the checksums its record holds, else None."""
        record = self.stage_record(stage)
        if not record or record.get("fingerprint") != config_fingerprint or not all(Path(p).exists() for p in outputs):
            return None
        recorded = record.get("outputs")
        if recorded is not None and (not isinstance(recorded, dict) or recorded != self.output_checksums(outputs)):
            return None
        return record["summary"]

    def output_checksums(self, outputs: tuple[Path, ...] | list[Path]) -> dict[str, str]:
        """SHA-256 of each output that is a file, by its path inside the work directory."""
        return {os.path.relpath(p, self.root): sha256_file(Path(p)) for p in outputs if Path(p).is_file()}

    def mark_stage_done(self, stage: str, config_fingerprint: str, config: Any, summary: dict[str, Any],
                        outputs: tuple[Path, ...] = ()) -> None:
        record = {"stage": stage, "fingerprint": config_fingerprint, "config": config, "summary": summary,
                  "outputs": self.output_checksums(outputs)}
        write_json(self.stages / f"{stage}.json", {**record, "checksum": _record_checksum(record)})

    def own_folders(self) -> list[Path]:
        """The folders albat writes (and `albat sql --out` must never write into)."""
        return [self.store, self.index, self.query, self.filter, self.stages, self.output]

    def forget_stage(self, stage: str) -> None:
        (self.stages / f"{stage}.json").unlink(missing_ok=True)

    def lock(self, shared: bool = False) -> None:
        """Take the work directory's lock: exclusive for a writer, shared for a reader (`verify`).

        It is an `flock` on the directory itself, so nothing is written for it, and the kernel drops
        it when the process dies: a killed run never blocks the next one. Directories this call has
        to create are removed again by `unlock` if they are still empty, so a run refused for bad
        input leaves the file tree exactly as it was."""
        while True:
            self._created = _make_dirs(self.root)
            fd = _open_lockable(self.root)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                if shared:
                    raise AlbatError(f"{self.root}: being written by {holder}; verify it once that run "
                                     "has finished") from None
                raise AlbatError(f"{self.root}: in use by {holder}; wait for it to finish or use "
                                 "another --work") from None
            if _same_file(fd, self.root):
                self._lock_fd = fd
                return
            os.close(fd)  # the directory was removed or replaced while we waited: lock the new one

    def unlock(self) -> None:
        if self._lock_fd is not None:
            for path in reversed(self._created):  # still holding the lock: nobody else is writing here
                try:
                    path.rmdir()
                except OSError:
                    break  # not empty: the run wrote something, keep it
            self._created = []
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None


def _record_checksum(record: dict[str, Any]) -> str:
    """Digest of a completion record's content (as JSON round-trips it), written into the record."""
    return hashlib.sha256(json.dumps(json.loads(json.dumps(record, default=str)), sort_keys=True).encode()).hexdigest()


def _make_dirs(root: Path) -> list[Path]:
    """Create `root` and its missing parents; return the directories created, outermost first."""
    missing = []
    path = root.absolute()
    while not path.exists():
        missing.append(path)
        path = path.parent
    created = []
    for path in reversed(missing):
        try:
            path.mkdir()
            created.append(path)
        except FileExistsError:
            pass
        except OSError as exc:
            raise AlbatError(f"{root}: cannot create the work directory ({exc.strerror}); choose "
                             "another --work") from None
    if not root.is_dir():
        raise AlbatError(f"{root}: not a directory; choose another --work")
    return created


def _open_lockable(root: Path) -> int:
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise AlbatError(f"{root}: cannot open the work directory ({exc.strerror}); check its "
                         "permissions or choose another --work") from None


def _same_file(fd: int, path: Path) -> bool:
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino)


def _lock_holder(fd: int) -> str:
    """'pid N' of the process holding an flock on `fd`'s file, from /proc/locks (Linux)."""
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as fh:
            for line in fh:
                parts = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == key:
                    return f"pid {parts[4]}"
    except OSError:
        pass
    return "another process"
