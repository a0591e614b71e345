"""`albat verify WORK`: check a work directory's files against their checksums and each other."""
from __future__ import annotations

from pathlib import Path

from albat.stores.verify import Finding, require_workdir, verify_workdir
from albat.stores.workdir import Workdir


def run_verify(work_dir: str | Path, quiet: bool = False, task: str | None = None) -> tuple[list[Finding], str]:
    """The findings and their report: one line each (`--quiet`: drift only), then a verdict line.
    `task`: check the store, the index and that task only (default: every task). Holds the work
    directory's lock shared, so no writer changes it during the check."""
    work = Workdir(work_dir, task=task or "default")
    require_workdir(work)  # before locking: the lock would create a missing directory
    work.require_task()
    work.lock(shared=True)
    try:
        findings = verify_workdir(work, [task] if task is not None else None)
    finally:
        work.unlock()
    drift = [f for f in findings if f.level == "drift"]
    lines = [f.line() for f in findings if not quiet or f.level == "drift"]
    lines.append(f"verify: {len(drift)} problem(s) found; fix them as each line says" if drift
                 else f"verify: no drift in {work.root}")
    return findings, "\n".join(lines)
