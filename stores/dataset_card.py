"""The dataset card of a published set: `OUTPUT/README.md`, a Hugging Face dataset card.

Its YAML header holds the HF dataset-card fields (`license`, `pretty_name`, `tags`, `configs`
with `data_files: data/*.parquet`, so `datasets.load_dataset(OUTPUT)` reads the shards, and
`dataset_info` with every column's type and the row count); Croissant's core fields map onto the
same facts (name, license, recordSet fields and their types, distribution = the shards). The body
says in words how the rows were selected (method, options, budget, seed, encoder, index) and the
counts at each stage. Built from the manifest alone and holding no timing, so a rerun of the same
selection writes the same bytes.
"""
from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

CARD = "README.md"

_SIMPLE = {pa.bool_(): "bool", pa.string(): "string", pa.large_string(): "large_string", pa.binary(): "binary",
           pa.large_binary(): "large_binary", pa.float16(): "float16", pa.float32(): "float32",
           pa.float64(): "float64", pa.date32(): "date32", pa.date64(): "date64", pa.null(): "null"}


def feature(data_type: pa.DataType) -> dict[str, Any]:
    """One column's type as the HF dataset card's `features` write it: {'dtype': ...}, {'list': ...},
    {'struct': [...]}."""
    if pa.types.is_integer(data_type):
        return {"dtype": str(data_type)}  # int8 ... uint64
    if data_type in _SIMPLE:
        return {"dtype": _SIMPLE[data_type]}
    if pa.types.is_timestamp(data_type):
        return {"dtype": f"timestamp[{data_type.unit}{', tz=' + data_type.tz if data_type.tz else ''}]"}
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type) or pa.types.is_fixed_size_list(data_type):
        inner = feature(data_type.value_type)
        return {"list": inner["dtype"] if set(inner) == {"dtype"} else inner}
    if pa.types.is_struct(data_type):
        return {"struct": [{"name": f.name, **feature(f.type)} for f in data_type]}
    return {"dtype": str(data_type)}


def features(schema: pa.Schema) -> list[dict[str, Any]]:
    return [{"name": f.name, **feature(f.type)} for f in schema]


def _type_words(spec: dict[str, Any]) -> str:
    if "dtype" in spec:
        return spec["dtype"]
    if "list" in spec:
        inner = spec["list"]
        return f"list<{inner if isinstance(inner, str) else _type_words(inner)}>"
    return "struct<" + ", ".join(f"{f['name']}: {_type_words(f)}" for f in spec["struct"]) + ">"


def header(manifest: dict[str, Any], schema: pa.Schema) -> dict[str, Any]:
    task = manifest.get("task", "default")
    return {
        "license": manifest.get("license", "unknown"),
        "pretty_name": f"albat selection: task {task}, method {manifest.get('method')}",
        "tags": ["albat", "data-selection", f"method:{manifest.get('method')}"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
        "dataset_info": {"features": features(schema),
                         "splits": [{"name": "train", "num_examples": int(manifest.get("rows", 0))}]},
    }


def dataset_card(manifest: dict[str, Any], schema: pa.Schema) -> str:
    """The card's text: YAML header, then what the set is and how it was selected."""
    import yaml

    config = manifest.get("config", {})
    selection = config.get("filter") or {}
    counts = manifest.get("counts", {})
    encoder = manifest.get("encoder", {})
    index = manifest.get("index", {})
    head = yaml.safe_dump(header(manifest, schema), sort_keys=False, allow_unicode=True)
    options = {k: v for k, v in selection.items() if k not in ("method", "budget")}
    lines = [
        "---", head.rstrip("\n"), "---", "",
        f"# albat selection: task `{manifest.get('task', 'default')}`", "",
        f"{manifest.get('rows', 0)} rows in {len(manifest.get('shards', []))} Parquet shards under `data/`: "
        f"{counts.get('selected', 0)} backbone rows selected by `{manifest.get('method')}` and "
        f"{counts.get('adaptation', 0)} adaptation rows (`albat_is_adaptation`). Weight each example's loss by "
        "`albat_weight` (adaptation rows 1, backbone rows lambda * n_A / m * w_b).", "",
        "```python",
        "import datasets",
        'ds = datasets.load_dataset("parquet", data_dir="data", split="train")  # or load_dataset(".") here',
        "```", "",
        f"License: `{manifest.get('license', 'unknown')}` (albat's `emit.license`; the corpus's own licence applies "
        "to its rows).", "",
        "## How it was selected", "",
        f"- method: `{manifest.get('method')}`, budget {selection.get('budget')}, seed {manifest.get('seed')}",
        f"- method options: `{json.dumps(options, sort_keys=True, default=str)}`",
        f"- encoder: `{encoder.get('name')}` (dim {encoder.get('dim')}, {encoder.get('backend')}/"
        f"{encoder.get('dtype')})",
        f"- index: `{index.get('index_key')}`, recall@{index.get('recall_k')} {index.get('recall_at_k')}",
        f"- retrieval: k = {(config.get('query') or {}).get('k')} neighbours per adaptation example; "
        f"near-duplicates of adaptation and evaluation examples blocked above cosine "
        f"{(config.get('query') or {}).get('dedup_threshold')}",
        "", "Every stage's effective config, the seeds, the inputs and each shard's SHA-256 are in `manifest.json`.",
        "", "## Counts", "", "| stage | rows |", "|---|---|",
        *(f"| {name} | {counts[name]} |" for name in ("corpus_rows", "candidates", "blocked", "selected", "adaptation")
          if name in counts),
        f"| emitted | {manifest.get('rows', 0)} |",
        "", "## Columns", "", "| column | type |", "|---|---|",
        *(f"| `{f['name']}` | {_type_words(f)} |" for f in features(schema)),
        "",
    ]
    return "\n".join(lines)
