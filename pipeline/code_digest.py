"""A digest of the code a stage's output depends on, so that a completed record made by other code is not
reused: the filter stage's fingerprint holds the digest of the selection code (`SELECTION_CODE`), and a rerun
after that code changed (an upgrade, an edit) selects again instead of skipping with the old selection."""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

PIPELINE = Path(__file__).resolve().parent
SELECTION_CODE = ("filter.py", "methods", "surrogates")  # what a selection depends on, under pipeline/


@lru_cache(maxsize=None)
def code_digest(parts: tuple[str, ...] = SELECTION_CODE, root: Path = PIPELINE) -> str:
    """16 hex digits of sha256 over the relative path and bytes of every .py file in `parts` (files or folders
    under `root`), in path order."""
    digest = hashlib.sha256()
    for part in parts:
        target = root / part
        for path in sorted(target.rglob("*.py")) if target.is_dir() else [target]:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
