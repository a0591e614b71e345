"""One TOML config for every stage; CLI flags override it; the effective config is recorded.

Sections mirror the stages. Unknown keys are errors (a typo must not silently use a default),
and relative paths in a config file are resolved against the file's directory.

Path rule: paths albat reads (inputs, adaptation and evaluation sets, a local encoder) may be
anywhere and are checked when a stage reads them. Everything albat writes lies inside the work
directory, under fixed names, except `emit.output`, the one write location a config chooses: it
is resolved against the work directory and refused if it leaves it (an absolute path elsewhere,
`..`, a symlink out) or names albat's own folders, so no config, however it was obtained, can make
albat replace (swap away and delete) a directory outside its work directory.
"""
from __future__ import annotations

import copy
import math
import os
import sys
from pathlib import Path
from typing import Any

from stores.errors import AlbatError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULTS: dict[str, Any] = {
    "work": "work",
    "seed": 0,
    "embed": {
        "input": [],  # Parquet/JSONL/text files, globs, directories, or a saved HF dataset dir
        "format": "auto",
        "text_column": "text",
        "pair_column": None,  # query side of (query, document) pairs, embedded beside the text
        "id_column": None,  # the corpus's own integer ids; default: row number in the stream
        "keep_columns": [],
        "encoder": "all-MiniLM-L6-v2",
        "batch_size": 64,
        "shard_rows": 8192,
        "dtype": "auto",  # auto (measured, see pipeline/encoder_probe.py) | float32 | bfloat16 | float16 | int8
        "backend": "auto",  # auto (measured) | torch | onnx (onnxruntime); stored vectors stay float32
        "device": "auto",  # auto (CUDA when present) | cpu | cuda | cuda:N
        "max_seq_length": None,
        "skip_empty": False,
        "max_text_bytes": 1 << 20,  # a longer text is an error (the encoder reads ~1 KB of it); 0: no limit
        "threads": 0,  # 0: all cores
        "probe_rows": 64,  # corpus texts timed per candidate backend/dtype when either is auto
    },
    "index": {
        "memory_budget": "4GB",
        "index_key": None,  # a FAISS factory string to force, e.g. "IVF256,PQ48x8"
        "flat_max_rows": 1_000_000,
        "recall_k": 10,
        "recall_queries": 1000,
        "target_recall": 0.95,
    },
    "query": {
        "adaptation": [],
        "format": "auto",
        "text_column": "text",
        "pair_column": None,  # the adaptation set's query side; default: the store's pair column name
        "exclude": [],
        "exclude_text_column": "text",
        "encoder": None,  # must match the store's; default: the store's own
        "device": "auto",
        "k": 32,
        "dedup_threshold": 0.95,
        "dedup_k": 16,
        "rerank_factor": 4,  # PQ indexes: retrieve k*factor, re-rank exactly from the stored vectors
    },
    "filter": {
        "method": "knn",
        "budget": 64,
    },
    "emit": {
        "shard_rows": 10_000,
        "include_adaptation": True,
        "backbone_weight": 1.0,  # lambda in L_bat
        "output": "output",  # where the shard set is published, relative to and inside the work directory
    },
}

# Keys whose values are paths (resolved against the config file's directory).
PATH_KEYS = {("work",), ("embed", "input"), ("query", "adaptation"), ("query", "exclude"), ("filter", "model")}
LIST_KEYS = {("embed", "input"), ("embed", "keep_columns"), ("query", "adaptation"), ("query", "exclude")}


def _check_keys(given: dict[str, Any], known: dict[str, Any], where: str, source: str) -> None:
    for key, value in given.items():
        name = f"{where}.{key}" if where else key
        if key not in known:
            if where == "filter":  # method options live beside the method name
                continue
            raise AlbatError(f"{source}: unknown key '{name}' (known: {', '.join(sorted(known))}); "
                             "fix the spelling or remove it")
        if isinstance(known[key], dict):
            if not isinstance(value, dict):
                raise AlbatError(f"{source}: '{name}' must be a [{name}] table; write its keys under a "
                              f"[{name}] line")
            _check_keys(value, known[key], name, source)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif value is not None:
            out[key] = value
    return out


def _resolve_paths(config: dict[str, Any], base_dir: Path) -> None:
    for keys in PATH_KEYS:
        section = config if len(keys) == 1 else config[keys[0]]
        key = keys[-1]
        value = section.get(key)
        if value is None:
            continue
        if isinstance(value, list):
            section[key] = [os.path.normpath(base_dir / v) if not Path(v).is_absolute() else v for v in value]
        elif not Path(value).is_absolute():
            section[key] = os.path.normpath(base_dir / value)


def _listify(config: dict[str, Any]) -> None:
    for section, key in [k for k in LIST_KEYS]:
        value = config[section].get(key)
        if isinstance(value, str):
            config[section][key] = [value]


# Folders of the work directory that albat owns (stores.workdir); emit.output may not name them.
RESERVED_DIRS = {"store", "index", "query", "filter", "_stages"}


def check_output_path(config: dict[str, Any], source: str) -> None:
    """Refuse an emit.output that leaves the work directory or names one of albat's own folders."""
    work = Path(config["work"])
    value = str(config["emit"]["output"])
    target = Path(os.path.normpath(work / value))
    inside = os.path.realpath(target).startswith(os.path.realpath(work) + os.sep)
    if not value or not inside or target.relative_to(work).parts[0] in RESERVED_DIRS:
        why = "is not inside" if not value or not inside else "would replace albat's own folder in"
        raise AlbatError(f"{source}: emit.output '{value}' {why} the work directory {work}; albat writes "
                         "only there: give a relative name such as 'output' or 'sets/knn' (copy or link "
                         "the published set elsewhere)")


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults, then the TOML file (paths relative to it), then CLI overrides."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise AlbatError(f"{path}: config file not found; check the --config path") from None
        except tomllib.TOMLDecodeError as exc:
            raise AlbatError(f"{path}: invalid TOML ({exc}); fix the syntax") from None
        _check_keys(raw, DEFAULTS, "", str(path))
        config = _merge(config, raw)
        _listify(config)
        _resolve_paths(config, path.resolve().parent)
    if overrides:
        config = _merge(config, overrides)
    _listify(config)
    from_cli = bool(overrides and overrides.get("emit", {}).get("output"))
    check_output_path(config, "--output" if from_cli or path is None else str(path))
    config["index"]["memory_budget_bytes"] = parse_bytes(config["index"]["memory_budget"])
    return config


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(value: str | int | float) -> int:
    """'4GB' -> 4e9, '512MiB' -> 536870912, 1000 -> 1000."""
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        text = str(value).strip().upper().replace(" ", "")
        digits = text.rstrip("KMGTIB")
        unit = text[len(digits):]
        try:
            number = float(digits)
        except ValueError:
            number = math.nan
    if unit not in _UNITS or not math.isfinite(number) or number < 0:
        raise AlbatError(f"memory budget '{value}' not understood; write e.g. 4GB or 512MiB")
    return int(number * _UNITS[unit])
