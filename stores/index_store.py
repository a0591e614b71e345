"""The FAISS index file and its `index_infos.json` (key, parameters, build time, size, recall).

An on-disk IVF index (`--on-disk`) adds `knn.ivfdata`, its inverted lists, which FAISS memory-maps
from the index file's own folder (IO_FLAG_ONDISK_SAME_DIR): it is built in a hidden staging folder
`.build-PID/` beside them and renamed in after the index file; the infos file, written last with
both files' SHA-256, is the commit point."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from albat.stores.atomic import atomic_path, read_json, sha256_file, write_json
from albat.stores.errors import AlbatError
from albat.stores.faults import output_file

INDEX_FILE = "knn.index"
INFOS_FILE = "index_infos.json"
IVFDATA_FILE = "knn.ivfdata"
LABELS = "row_positions"  # what the index's labels are: row positions in the store (never -1, FAISS's "none")


def fresh_staging(directory: Path) -> Path:
    """An empty hidden folder for an index being built (earlier runs' leftovers removed; never read)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".build-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = directory / f".build-{os.getpid()}"
    staging.mkdir()
    return staging


def write_index(index: Any, directory: Path, infos: dict[str, Any], staging: Path | None = None) -> None:
    """Write the index (and move in its on-disk lists from `staging`), then its infos: a present
    infos file means a complete index."""
    import faiss

    directory.mkdir(parents=True, exist_ok=True)
    (directory / INFOS_FILE).unlink(missing_ok=True)
    ivfdata = directory / IVFDATA_FILE
    ivfdata.unlink(missing_ok=True)
    with atomic_path(directory / INDEX_FILE) as tmp, output_file(tmp, INDEX_FILE) as fh:
        faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))
    extra = {}
    if staging is not None:  # after the index is written: FAISS touches the lists' file while writing
        os.replace(staging / IVFDATA_FILE, ivfdata)
        shutil.rmtree(staging, ignore_errors=True)
        extra = {"ivfdata_sha256": sha256_file(ivfdata)}
    infos = {**infos, **extra, "index_bytes": (directory / INDEX_FILE).stat().st_size,
             "index_sha256": sha256_file(directory / INDEX_FILE)}
    write_json(directory / INFOS_FILE, infos)


def read_infos(directory: Path) -> dict[str, Any]:
    path = directory / INFOS_FILE
    if not path.exists():
        raise AlbatError(f"{directory}: no complete index; run `albat index` first")
    try:
        infos = read_json(path)
    except (OSError, ValueError):
        infos = None
    if not isinstance(infos, dict) or not all(k in infos for k in ("index_key", "kind", "rows", "dim")):
        raise AlbatError(f"{path}: damaged (does not parse as index infos); rerun `albat index`, which rebuilds it")
    return infos


def read_index(directory: Path) -> tuple[Any, dict[str, Any]]:
    """Load the index (FAISS's own format, never a pickle) with its infos; nprobe as tuned."""
    import faiss

    infos = read_infos(directory)
    path = directory / INDEX_FILE
    if not path.exists():
        raise AlbatError(f"{path}: missing; rerun `albat index`, which rebuilds it")
    if infos.get("index_sha256") and sha256_file(path) != infos["index_sha256"]:
        raise AlbatError(f"{path}: SHA-256 differs from {INFOS_FILE}'s (damaged or changed); rerun `albat index`, "
                         "which rebuilds it")
    flags = 0
    if infos.get("on_disk"):
        ivfdata = directory / IVFDATA_FILE
        if not ivfdata.exists() or sha256_file(ivfdata) != infos.get("ivfdata_sha256"):
            raise AlbatError(f"{ivfdata}: missing, or its SHA-256 differs from {INFOS_FILE}'s; rerun `albat index`, "
                             "which rebuilds it")
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR  # the lists are memory-mapped from this folder, wherever it moved
    try:
        index = faiss.read_index(str(directory / INDEX_FILE), flags)
    except RuntimeError as exc:
        raise AlbatError(f"{directory / INDEX_FILE}: unreadable FAISS index ({str(exc).splitlines()[0]}); "
                         "rerun `albat index`") from None
    if infos.get("nprobe"):
        faiss.extract_index_ivf(index).nprobe = int(infos["nprobe"])
    if infos.get("ef_search"):
        index.hnsw.efSearch = int(infos["ef_search"])
    return index, infos
