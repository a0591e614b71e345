"""The FAISS index file and its `index_infos.json` (key, parameters, build time, size, recall)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from stores.atomic import atomic_path, read_json, sha256_file, write_json
from stores.errors import AlbatError
from stores.faults import output_file

INDEX_FILE = "knn.index"
INFOS_FILE = "index_infos.json"
LABELS = "row_positions"  # what the index's labels are: row positions in the store (never -1, FAISS's "none")


def write_index(index: Any, directory: Path, infos: dict[str, Any]) -> None:
    """Write the index, then its infos: a present infos file means a complete index."""
    import faiss

    directory.mkdir(parents=True, exist_ok=True)
    (directory / INFOS_FILE).unlink(missing_ok=True)
    with atomic_path(directory / INDEX_FILE) as tmp, output_file(tmp, INDEX_FILE) as fh:
        faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))
    infos = {**infos, "index_bytes": (directory / INDEX_FILE).stat().st_size,
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
    try:
        index = faiss.read_index(str(directory / INDEX_FILE))
    except RuntimeError as exc:
        raise AlbatError(f"{directory / INDEX_FILE}: unreadable FAISS index ({str(exc).splitlines()[0]}); "
                         "rerun `albat index`") from None
    if infos.get("nprobe"):
        faiss.extract_index_ivf(index).nprobe = int(infos["nprobe"])
    return index, infos
