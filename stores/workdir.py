"""The work directory: where each stage's store lives, its completion records, and the writer lock.

One store and index, shared by every task (embed once, select for many targets):

    WORK/store/                    embedding store (stores.embedding_store)
    WORK/index/                    FAISS index + index_infos.json (stores.index_store)
    WORK/_stages/index.json        the shared stages' completion record (embed keeps its own in store.json)

and per task (`--task NAME`, default `default`), everything the task's stages write:

    WORK/tasks/NAME/query/         adaptation set, candidates, candidate pairs, blocked ids
    WORK/tasks/NAME/filter/        selection.parquet
    WORK/tasks/NAME/mix/           weights.parquet, groups.parquet, log_lik.npy (albat mix, when asked)
    WORK/tasks/NAME/output/        the published set (stores.shard_store): data/part-*.parquet,
                                   manifest.json, README.md (dataset card), _SUCCESS; `emit.output` renames it
    WORK/tasks/NAME/_stages/       query.json, filter.json, emit.json: the config each ran with and its summary

A work directory of the earlier single-task layout (WORK/query, WORK/filter, WORK/output and their
records in WORK/_stages) is read as task `default` until the first writing command, which moves
those folders and records into WORK/tasks/default/ under the lock (`migrate_legacy`).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from albat.stores.atomic import read_json, sha256_file, write_json
from albat.stores.errors import AlbatError


def fingerprint(config: Any) -> str:
    """Stable digest of the options a stage's output depends on."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


OWN_FOLDERS = ("store", "index", "query", "filter", "mix", "_stages", "tasks")
TASK_FOLDERS = ("query", "filter", "mix", "_stages")  # a task's own folders; its emit.output may not name them
TASK_STAGES = ("query", "filter", "mix", "emit")  # each task's own; the others (embed, index) are shared by every task
DEFAULT_TASK = "default"
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_MIGRATING = ".default.migrating"  # tasks/.default.migrating: the legacy task while it is being moved


def check_task_name(name: str) -> str:
    """A task name is a plain folder name: letters, digits, '.', '_', '-', starting with a letter or digit."""
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise AlbatError(f"task name {name!r}: give 1-100 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit (e.g. --task math)")
    return name


class Workdir:
    def __init__(self, root: Path | str, output: str | None = None, task: str = DEFAULT_TASK):
        """`task`: whose query, filter and output this is (`WORK/tasks/TASK/`); `output`: the shard
        set's folder inside the task's folder (config emit.output); by default the one the task's
        last emit recorded, else `output`."""
        self.root = Path(root)
        self.store = self.root / "store"
        self.index = self.root / "index"
        self.stages = self.root / "_stages"
        self.tasks = self.root / "tasks"
        self.task = check_task_name(task)
        self._output_name = output
        self.remote: Any = None  # stores.remote.Mirror when this is the local mirror of a URL
        self._lock_fd: int | None = None
        self._shared_fds: list[int] = []
        self._created: list[Path] = []
        self._place_task()

    def _place_task(self) -> None:
        """The task's folders: WORK/tasks/TASK/, or for task `default` of a not yet migrated
        single-task work directory, the earlier layout's WORK/query, WORK/filter, WORK/output."""
        legacy = self.task == DEFAULT_TASK and self.legacy_layout()
        self.task_root = self.root if legacy else self.tasks / self.task
        self.query = self.task_root / "query"
        self.filter = self.task_root / "filter"
        self.mix = self.task_root / "mix"
        self.task_stages = self.stages if legacy else self.task_root / "_stages"
        self.output = self.task_root / (self._output_name or self._recorded_output())

    def legacy_layout(self) -> bool:
        """Whether this is a work directory of the single-task layout not yet (fully) migrated."""
        if (self.tasks / DEFAULT_TASK).exists():
            return False
        return (self.tasks / _MIGRATING).exists() or any(
            (self.root / name).exists() for name in ("query", "filter", "mix", *(f"_stages/{s}.json" for s in TASK_STAGES)))

    def task_names(self) -> list[str]:
        """Every task of the work directory (`default` for a single-task directory of the earlier layout)."""
        names = {p.name for p in self.tasks.iterdir() if p.is_dir() and TASK_NAME.fullmatch(p.name)} \
            if self.tasks.is_dir() else set()
        if self.legacy_layout():
            names.add(DEFAULT_TASK)
        return sorted(names)

    def require_task(self) -> None:
        """Refuse a task other than `default` that this work directory does not hold (a reader's typo)."""
        if self.task != DEFAULT_TASK and self.task not in self.task_names():
            raise AlbatError(f"{self.root}: no task {self.task!r} (tasks: {', '.join(self.task_names()) or 'none yet'}); "
                             "pass one of them to --task, or run `albat run --task NAME` first")

    def for_task(self, task: str) -> "Workdir":
        """The same work directory seen as another task (no lock is shared)."""
        return Workdir(self.root, task=task)

    def _recorded_output(self) -> str:
        try:
            name = str((self.stage_record("emit") or {})["config"]["output"])
            if not name or Path(name).parts[0] in TASK_FOLDERS + OWN_FOLDERS:
                return "output"
        except (KeyError, TypeError, ValueError, OSError, IndexError):
            return "output"
        inside = os.path.realpath(self.task_root / name).startswith(os.path.realpath(self.task_root) + os.sep)
        return name if inside else "output"  # a tampered record cannot point readers elsewhere

    def record_path(self, stage: str) -> Path:
        """`_stages/STAGE.json`: the task's for its own stages (query, filter, emit), else the work directory's."""
        return (self.task_stages if stage in TASK_STAGES else self.stages) / f"{stage}.json"

    def stage_record(self, stage: str) -> dict[str, Any] | None:
        """The stage's completion record; None when there is none or it does not parse as one (a
        truncated or hand-edited record means "not complete": the stage reruns and rewrites it)."""
        path = self.record_path(stage)
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
        if recorded is not None and (not isinstance(recorded, dict) or recorded != self.output_checksums(outputs, stage)):
            return None
        return record["summary"]

    def record_base(self, stage: str) -> Path:
        """What a stage record's output paths are relative to: the work directory for the shared
        stages, the task's folder for its own (so a migrated record still names its files)."""
        return self.task_root if stage in TASK_STAGES else self.root

    def output_checksums(self, outputs: tuple[Path, ...] | list[Path], stage: str) -> dict[str, str]:
        """SHA-256 of each output that is a file, by its path inside the work directory (task stages:
        inside the task's folder)."""
        base = self.record_base(stage)
        return {os.path.relpath(p, base): sha256_file(Path(p)) for p in outputs if Path(p).is_file()}

    def mark_stage_done(self, stage: str, config_fingerprint: str, config: Any, summary: dict[str, Any],
                        outputs: tuple[Path, ...] = (), upstream: dict[str, str] | None = None,
                        seed: int | None = None) -> None:
        """Write the completion record: the fingerprint, the options the stage ran with and the run's
        seed (the manifest's effective config is read from these), the summary, the outputs' SHA-256."""
        record = {"stage": stage, "fingerprint": config_fingerprint, "config": config, "summary": summary,
                  "outputs": self.output_checksums(outputs, stage), **({"upstream": upstream} if upstream else {})}
        if seed is not None:
            record["seed"] = seed
        write_json(self.record_path(stage), {**record, "checksum": _record_checksum(record)})

    def own_folders(self) -> list[Path]:
        """The folders albat writes (and `albat sql --out` must never write into)."""
        return [self.store, self.index, self.stages, self.tasks, self.query, self.filter, self.mix, self.task_stages,
                self.output]

    def forget_stage(self, stage: str) -> None:
        self.record_path(stage).unlink(missing_ok=True)

    def migrate_legacy(self) -> None:
        """Move a single-task work directory of the earlier layout into task `default` (under the
        writer lock): its emitted set (the folder its emit record names), the query and filter
        folders and their records go to WORK/tasks/.default.migrating/, which is then renamed
        WORK/tasks/default in one step. Each move is a rename within the work directory, nothing is
        recomputed; a run killed part-way continues the moves the next time. The moved set keeps
        its flat layout (shards beside manifest.json): the next `albat emit` republishes it as
        data/ + manifest + card, because it has no _SUCCESS marker."""
        if not self.legacy_layout():
            return
        staging = self.tasks / _MIGRATING
        (staging / "_stages").mkdir(parents=True, exist_ok=True)
        record = self.stages / "emit.json" if (self.stages / "emit.json").exists() else staging / "_stages/emit.json"
        try:
            name = str(read_json(record)["config"]["output"])
        except (OSError, ValueError, KeyError, TypeError):
            name = "output"
        if not name or Path(name).is_absolute() or ".." in Path(name).parts or Path(name).parts[0] in OWN_FOLDERS:
            name = "output"
        moves = [(self.root / name, staging / name)]
        moves += [(self.stages / f"{s}.json", staging / "_stages" / f"{s}.json") for s in TASK_STAGES]
        moves += [(self.root / d, staging / d) for d in ("query", "filter", "mix")]
        for source, target in moves:
            if (source.exists() or source.is_symlink()) and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
        for stale in [*self.root.glob(".query.staging-*"), *self.root.glob(".query.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed run of the earlier layout; never read
        os.replace(staging, self.tasks / DEFAULT_TASK)
        self._place_task()

    def lock(self, shared: bool = False, read_links: bool = False) -> None:
        """Take the work directory's lock: exclusive for a writer, shared for a reader (`verify`).

        It is an `flock` on the directory itself, so nothing is written for it, and the kernel drops
        it when the process dies: a killed run never blocks the next one. Directories this call has
        to create are removed again by `unlock` if they are still empty, so a run refused for bad
        input leaves the file tree exactly as it was.

        The shared files are covered too: where `store` or `index` is a link to a folder elsewhere
        (a store shared between work directories), the directory holding its real location is
        locked as well, so a run in another work directory using the same store (or the one that
        owns it) is refused while this one holds it. A writer then moves a work directory of the
        earlier single-task layout into task `default` (`migrate_legacy`). `read_links=True` (stages
        that only read the store and index: query, filter, mix, emit) takes the linked folders'
        lock shared, so many work directories over one store run side by side, while `embed` and
        `index` (exclusive) wait for all of them."""
        while True:
            self._created = _make_dirs(self.root)
            fd = _open_lockable(self.root)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise _busy(self.root, holder, shared) from None
            if _same_file(fd, self.root):
                self._lock_fd = fd
                break
            os.close(fd)  # the directory was removed or replaced while we waited: lock the new one
        try:
            self._lock_shared_folders(shared or read_links, verifying=shared)
            if not shared:
                self.migrate_legacy()
        except BaseException:
            self.unlock()
            raise

    def _lock_shared_folders(self, shared: bool, verifying: bool) -> None:
        """flock the directory holding the real location of `store` and `index` where that is not
        this work directory (they are links into another one, or to a shared folder)."""
        own = os.path.realpath(self.root)
        holders = sorted({os.path.dirname(os.path.realpath(p)) for p in (self.store, self.index)
                          if p.is_symlink()} - {own})
        for folder in holders:
            fd = _open_lockable(Path(folder))
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise _busy(Path(folder), holder, verifying, f" (it holds the store or index {self.root} links to)") \
                    from None
            self._shared_fds.append(fd)

    def unlock(self) -> None:
        for fd in self._shared_fds:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._shared_fds = []
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


def _busy(root: Path, holder: str, shared: bool, why: str = "") -> AlbatError:
    if shared:
        return AlbatError(f"{root}: being written by {holder}{why}; verify it once that run has finished")
    return AlbatError(f"{root}: in use by {holder}{why}; wait for it to finish or use another --work")


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
