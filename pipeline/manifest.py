"""The emitted manifest's config and provenance, read from the stage records, made portable.

Every stage's effective config comes from the record the stage wrote when it ran (embed's from
`store.json`, the others' from `_stages/*.json`), not from the call that runs emit: a run made
stage by stage with different flags records what each stage really used. Nothing in the manifest
names an absolute local path: paths become relative to the work directory, the encoder's files
are named by their installed package and version (or the content hash of a local model folder),
and the small adaptation and evaluation files by their SHA-256.
"""
from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path
from typing import Any

from albat.stores.atomic import sha256_file

STAGES = ("embed", "index", "query", "filter", "emit")


def relative_path(value: str, root: Path | str) -> str:
    """An absolute path as seen from the work directory `root` (a relative one is left as it is)."""
    return os.path.relpath(value, os.path.abspath(root)) if os.path.isabs(value) else value


def portable(obj: Any, root: Path | str) -> Any:
    """`obj` with every string that is an absolute path made relative to `root`."""
    if isinstance(obj, dict):
        return {k: portable(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v, root) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj):
        return relative_path(obj, root)
    return obj


def installed_package(path: str) -> dict[str, str] | None:
    """{'package', 'version'} of the installed distribution whose files hold `path`, else None."""
    real = os.path.realpath(path)
    for entry in sys.path:
        base = os.path.realpath(entry or ".")
        if not real.startswith(base.rstrip(os.sep) + os.sep) or not os.path.isdir(base):
            continue
        top = Path(os.path.relpath(real, base)).parts[0]
        top = top[:-3] if top.endswith(".py") else top
        for dist in importlib.metadata.packages_distributions().get(top, []):
            try:
                return {"package": dist, "version": importlib.metadata.version(dist)}
            except importlib.metadata.PackageNotFoundError:
                continue
    return None


def encoder_source(identity: dict[str, Any], root: Path | str) -> dict[str, Any]:
    """The encoder identity without its local path: the package that ships it, or the content hash
    (and work-relative path) of a local model folder, or the name as given (an HF cache name)."""
    out = {k: v for k, v in identity.items() if k not in ("probe", "path")}
    path = identity.get("path")
    if not path or not os.path.isabs(str(path)):
        return out
    package = installed_package(str(path))
    if package:
        out["source"] = package
    elif os.path.isdir(path):
        from albat.pipeline.encoder_backends import model_content_hash

        out["source"] = {"path": relative_path(str(path), root), "sha256": model_content_hash(Path(path))}
    if os.path.isabs(str(out.get("name", ""))):
        out["name"] = relative_path(str(out["name"]), root)
    return out


def file_list(paths: list[str], root: Path | str, digest: bool) -> list[dict[str, Any]]:
    """Each file as {'path' (work-relative), 'bytes'[, 'sha256']}; a file gone since is listed by path."""
    out = []
    for path in paths:
        entry: dict[str, Any] = {"path": relative_path(str(path), root)}
        if os.path.isfile(path):
            entry["bytes"] = os.path.getsize(path)
            if digest:
                entry["sha256"] = sha256_file(Path(path))
        out.append(entry)
    return out


def effective_config(records: dict[str, dict[str, Any] | None], emit_options: dict[str, Any], task: str,
                     root: Path | str) -> dict[str, Any]:
    """The config each stage ran with, from its record (None: the record predates recorded configs)."""
    config: dict[str, Any] = {"work": ".", "task": task}
    filter_record = records.get("filter") or {}
    config["seed"] = (filter_record.get("summary") or {}).get("seed", filter_record.get("seed"))
    for stage in STAGES[:-1]:
        config[stage] = (records.get(stage) or {}).get("config")
    config["emit"] = emit_options
    return portable(config, root)


def stage_seeds(records: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The seed of every random choice, as each stage recorded it."""
    index_seed = (records.get("index") or {}).get("seed")
    return {"encoder_probe_sample": (records.get("embed") or {}).get("seed"),
            "index_sample": index_seed, "recall_sample": index_seed + 1 if isinstance(index_seed, int) else None,
            "filter": (records.get("filter") or {}).get("seed")}
