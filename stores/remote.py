"""Work directories on object storage: `--work s3://bucket/run` (gs://, az://, memory://, file://:
any URL an fsspec file system opens; the scheme's package must be installed).

FAISS indexes and memory-mapped vectors need local files, so a remote work directory is mirrored:

    pull     before the stages run, the objects the remote holds are copied into a local mirror,
             $ALBAT_CACHE_DIR/work/<digest of the URL>/ (or $ALBAT_WORK_MIRROR), each by a temporary
             name and a rename; the stages then run there as on any local work directory
    push     after each stage, what the stage changed is uploaded: data objects first, completion
             records last; files the stage removed are deleted from the remote, records first

Object stores have no atomic rename, so the local directory swap is replaced by ordering and the
records: one object is written whole or not at all (a PUT), no record reaches the remote before the
data it vouches for, and a record leaves it before its data. A reader trusts only recorded output: a
store shard's files are pulled only when its completion record is there (a worker killed between
its data and its record leaves files no stage reads), and a stage whose record is missing reruns.
The ray executor's actors write each shard straight to the remote the same way (`upload_shard`),
so nodes need no shared file system; the driver pulls the shards before it finishes the store.
Object stores have no locks either: one writer per remote work directory at a time.

`.albat-mirror.json` in the mirror remembers, per file, its local (size, mtime) and the remote
object's (size, ETag or mtime) at the last transfer, so a rerun moves only what changed.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from albat.stores.errors import AlbatError

STATE = ".albat-mirror.json"
SHARD_DATA = (".emb.npy", ".meta.parquet", ".pair.npy")


def is_work_url(work: str | os.PathLike) -> bool:
    """A work directory given as a URL (`scheme://...`, file:// included), not a local path."""
    from albat.stores.sources import has_scheme

    return isinstance(work, str) and has_scheme(work)


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec file system, root path inside it) for a work directory URL."""
    from albat.stores.sources import url_filesystem

    return url_filesystem(url, label=f"--work {url}")


def mirror_root(url: str) -> Path:
    """The local mirror of a remote work directory."""
    if os.environ.get("ALBAT_WORK_MIRROR"):
        return Path(os.environ["ALBAT_WORK_MIRROR"])
    from albat.pipeline.encoder_backends import cache_dir

    return cache_dir() / "work" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def is_record(rel: str) -> bool:
    """A completion record: a shard's done record, the store's description, a stage record, an
    output's `_SUCCESS`. Pushed after every data file, deleted before them."""
    name = rel.rsplit("/", 1)[-1]
    return (name.endswith(".done.json") or rel == "store/store.json" or name == "_SUCCESS"
            or f"/{rel}".rsplit("/", 2)[-2] == "_stages")


def push_order(rels: list[str]) -> list[str]:
    """Data files, then records (deeper records first: shard records before the store's description)."""
    return sorted(rels, key=lambda r: (is_record(r), -r.count("/") if is_record(r) else 0, r))


def recorded_only(rels: set[str]) -> set[str]:
    """The files a reader may trust: every file but a store shard's data without its done record,
    and temporaries (hidden names)."""
    keep = set()
    for rel in rels:
        name = rel.rsplit("/", 1)[-1]
        if name.startswith("."):
            continue
        data = next((s for s in SHARD_DATA if name.endswith(s)), None)
        if data and rel.startswith("store/shards/") and rel[: -len(data)] + ".done.json" not in rels:
            continue
        keep.add(rel)
    return keep


def _stamp(info: dict[str, Any]) -> list:
    """What identifies a remote object's version: its size and ETag (or modification time)."""
    version = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("mtime") \
        or info.get("LastModified") or info.get("last_modified") or info.get("created")
    return [int(info.get("size") or 0), str(version)]


def _local_stamp(path: Path) -> list:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


class Mirror:
    """A remote work directory and its local mirror."""

    def __init__(self, url: str, local: Path | None = None):
        self.url = url.rstrip("/")
        self.fs, self.root = filesystem(self.url)
        self.root = self.root.rstrip("/")
        self.local = Path(local) if local is not None else mirror_root(self.url)

    # ----- bookkeeping -------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        """{"url": ..., "files": {rel: {"local": stamp, "remote": stamp}}} of the last transfer, or {}."""
        try:
            state = json.loads((self.local / STATE).read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) and state.get("url") == self.url else {}

    def _save(self, files: dict[str, dict[str, list]]) -> None:
        tmp = self.local / f".{STATE}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps({"url": self.url, "files": files}, sort_keys=True))
        os.replace(tmp, self.local / STATE)

    def _remote_files(self, under: str = "") -> dict[str, dict[str, Any]]:
        base = f"{self.root}/{under}".rstrip("/")
        self.fs.invalidate_cache()  # another process (a ray actor, another run) may have written since
        try:
            found = self.fs.find(base, detail=True) if self.fs.exists(base) else {}
        except OSError as exc:
            raise AlbatError(f"--work {self.url}: cannot list it ({exc}); check the URL and the credentials") from None
        out = {}
        for path, info in found.items():
            path = path.rstrip("/")
            if info.get("type", "file") != "file" or not path.startswith(self.root + "/"):
                continue
            out[path[len(self.root) + 1:]] = info
        return out

    def _local_files(self) -> dict[str, Path]:
        out = {}
        for path in self.local.rglob("*"):
            rel = path.relative_to(self.local).as_posix()
            if path.is_file() and not path.is_symlink() and not any(p.startswith(".") for p in rel.split("/")):
                out[rel] = path
        return out

    # ----- transfers ---------------------------------------------------------------------
    def pull(self, under: str = "") -> int:
        """Copy the remote's recorded files (below `under`) into the mirror, each by a temporary
        name and a rename; a file the last transfer moved that the remote no longer holds (or no
        longer vouches for) is removed locally. Returns the number of files copied."""
        self.local.mkdir(parents=True, exist_ok=True)
        state = self._state().get("files", {})
        remote = self._remote_files(under)
        trusted = recorded_only(set(remote))
        copied = 0
        for rel in push_order(list(trusted)):  # data first, records last, as on the remote: a kill leaves no record ahead of its data
            target = self.local / rel
            stamp = _stamp(remote[rel])
            if target.exists() and state.get(rel, {}).get("remote") == stamp \
                    and state[rel].get("local") == _local_stamp(target):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            self.fs.get_file(f"{self.root}/{rel}", str(tmp))
            os.replace(tmp, target)
            state[rel] = {"remote": stamp, "local": _local_stamp(target)}
            copied += 1
        for rel in [r for r in state if r.startswith(under) and r not in trusted]:
            (self.local / rel).unlink(missing_ok=True)  # removed (or its record removed) remotely since the last transfer
            del state[rel]
        self._save(state)
        return copied

    def push(self) -> int:
        """Upload what changed in the mirror since the last transfer (data first, records last) and
        delete from the remote what the mirror no longer holds (records first). Returns the number
        of files uploaded."""
        state = self._state().get("files", {})
        local = self._local_files()
        gone = [r for r in state if r not in local]
        for rel in sorted(gone, key=lambda r: (not is_record(r), r)):
            try:
                self.fs.rm_file(f"{self.root}/{rel}")
            except FileNotFoundError:
                pass
            del state[rel]
        self._save(state)
        changed = [r for r, p in local.items() if state.get(r, {}).get("local") != _local_stamp(p)]
        for rel in push_order(changed):
            remote = f"{self.root}/{rel}"
            self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(local[rel]), remote)
            state[rel] = {"remote": _stamp(self.fs.info(remote)), "local": _local_stamp(local[rel])}
            self._save(state)  # each upload remembered at once: a killed push resumes where it stopped
        return len(changed)


def upload_shard(shard_dir: Path, name: str, remote_shards: str) -> None:
    """Put one finished store shard (`name`: part-NNNNN) from a local folder to the remote store's
    shards folder: its data files first, the completion record last."""
    fs, root = filesystem(remote_shards)
    fs.makedirs(root, exist_ok=True)
    for file in push_order([p.name for p in shard_dir.glob(f"{name}.*")]):
        fs.put_file(str(shard_dir / file), f"{root.rstrip('/')}/{file}")


def local_work(work: str) -> str:
    """The folder a reader (sql, report, verify, diagnose) opens: `work` itself, or for a URL its
    mirror, pulled first."""
    if not is_work_url(work):
        return work
    mirror = Mirror(work)
    mirror.pull()
    return str(mirror.local)


def fetch_shard(remote_store: str, shard: int, scratch: str | Path) -> Any:
    """One recorded shard of a remote store (and its store.json) in a scratch folder, as an
    EmbeddingStore a per-shard scan reads; an error when the shard has no completion record."""
    from albat.stores.embedding_store import EmbeddingStore, shard_name

    fs, root = filesystem(remote_store)
    root = root.rstrip("/")
    store = EmbeddingStore(scratch)
    store.shard_dir.mkdir(parents=True, exist_ok=True)
    fs.get_file(f"{root}/store.json", str(store.info_path))
    done = f"{root}/shards/{shard_name(shard)}.done.json"
    if not fs.exists(done):
        raise AlbatError(f"{done}: no completion record; rerun `albat embed` on {remote_store.rsplit('/', 1)[0]}")
    for path in fs.glob(f"{root}/shards/{shard_name(shard)}.*"):
        fs.get_file(path, str(store.shard_dir / path.rstrip("/").rsplit("/", 1)[-1]))
    return store
