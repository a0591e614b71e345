"""Parquet tables of the work directory (candidates, selection, ...): atomic write, clear read errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from albat.stores.atomic import atomic_path
from albat.stores.errors import AlbatError
from albat.stores.faults import output_file


def write_table(table: pa.Table, path: Path) -> None:
    with atomic_path(Path(path)) as tmp, output_file(tmp, Path(path).name) as fh:
        pq.write_table(table, fh, compression="zstd")


def read_table(path: Path, stage_hint: str = "") -> pa.Table:
    path = Path(path)
    if not path.exists():
        hint = f"; run `albat {stage_hint}` first" if stage_hint else ""
        raise AlbatError(f"{path}: missing{hint}")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise AlbatError(f"{path}: unreadable Parquet ({exc}); delete it and rerun the stage") from None


def write_array(array: np.ndarray, path: Path) -> None:
    with atomic_path(Path(path)) as tmp, output_file(tmp, Path(path).name) as fh:
        np.save(fh, array, allow_pickle=False)


def read_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise AlbatError(f"{path}: unreadable array ({exc}); delete it and rerun the stage") from None
