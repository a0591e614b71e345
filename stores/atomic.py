"""Write-then-rename helpers: a reader never sees a half-written file."""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from albat.stores.faults import crash_point


def temp_name(final: Path) -> Path:
    """A sibling name that readers and globs (`part-*.parquet`) ignore."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_temps(final: Path) -> None:
    """Delete temporaries of `final` that a killed process left (never read; its pid is gone)."""
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def naming(exc: OSError, path: Path | str) -> OSError:
    """`exc` with a file name (Arrow's and NumPy's write errors often carry none, or no errno)."""
    if exc.filename and exc.errno:
        return exc
    number = exc.errno
    if not number:
        match = re.search(r"errno[ =:]*(\d+)", str(exc), re.IGNORECASE)
        number = int(match.group(1)) if match else None
    if number is None:
        named = next((n for n, text in ((errno.ENOSPC, "No space left"), (errno.EROFS, "Read-only file system"),
                                        (errno.EACCES, "Permission denied"), (errno.EMFILE, "Too many open files"))
                      if text.lower() in str(exc).lower()), None)
        number = named
    if number is None:
        return exc
    return OSError(number, os.strerror(number), str(exc.filename or path))


def before_publish(tmp: Path, final: Path) -> None:
    """Called with each finished temporary before its rename (tests inject OS errors here)."""


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path; on success fsync it and rename it onto `final`, else delete it. An
    OS error (no space, read-only, permissions) leaves nothing behind and names `final`."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise naming(exc, final.parent) from None
    _remove_dead_temps(final)
    tmp = temp_name(final)
    try:
        yield tmp
        before_publish(tmp, final)
        if tmp.is_file():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        crash_point(f"rename:{final.name}")
        os.replace(tmp, final)
        crash_point(f"renamed:{final.name}")
        _fsync_dir(final.parent)
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # a read-only file system: nothing was written either
        if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, BrokenPipeError)):
            raise naming(exc, final) from None
        raise


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where
    the system or file system cannot, so the caller falls back to two renames."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


@contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """Yield an empty hidden staging directory; on success swap it in for `final`, so a reader sees
    the previous complete directory or the new one, never a mix; on failure delete it. The swap is
    one atomic exchange where the system allows it (Linux), else two renames between which `final`
    is briefly absent (a reader then finds no set, never part of one)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*final.parent.glob(f".{final.name}.staging-*"), *final.parent.glob(f".{final.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed run; never read
    staging = final.with_name(f".{final.name}.staging-{os.getpid()}")
    try:
        staging.mkdir()
    except OSError as exc:
        raise naming(exc, final.parent) from None
    try:
        yield staging
        crash_point(f"{final.name}.before_swap")
        if final.exists() and exchange(staging, final):
            old = staging  # now holds the previous set
        else:
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            if final.exists():
                os.replace(final, old)
                crash_point(f"{final.name}.moved_old")
            os.replace(staging, final)
        crash_point(f"{final.name}.swapped")
        _fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, BrokenPipeError)):
            raise naming(exc, final) from None
        raise


def write_json(path: Path, obj: Any) -> None:
    """Atomically write `obj` as sorted, indented JSON (stable bytes for stable content)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_temps(directory: Path) -> None:
    """Delete temporaries a killed run left behind (they are never read)."""
    if directory.is_dir():
        for stale in directory.glob(".*.tmp-*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
