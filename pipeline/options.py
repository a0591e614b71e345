"""The option schema: every option albat takes, declared once with its type, range, default and help.

From the declarations come the config defaults (`pipeline.config.DEFAULTS`), the CLI flags
(`pipeline.cli`), the checks every value passes before any stage does work, and the README's
option tables (`markdown_table`, kept in sync by `scripts/option_tables.py` and a test).

The stages' options are declared here, per config section (`SECTIONS`); each selection method
declares its own as `OPTIONS` on its class (`pipeline.methods`), the surrogates theirs in
`pipeline.surrogates.options`. This module imports nothing heavy: `albat --help` builds its flags
from it.

A value is checked by its `Option`: `int` refuses booleans, fractions and words ("2.5", "ten",
true); `float` refuses NaN always and ±inf unless the option says `inf=True`; strings from the
command line are parsed to the option's type (`--k 4`, `--method-option lr=1e-3`); a bound is
inclusive (`min`, `max`) or strict (`above`, `below`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from albat.stores.errors import AlbatError

INT, FLOAT, STR, BOOL, LIST, BYTES = "int", "float", "str", "bool", "list", "bytes"


class OptionError(ValueError):
    """A value the option refuses; `str()` is the problem, `Option.expect()` the fix."""


@dataclass(frozen=True)
class Option:
    name: str  # the config key
    kind: str  # INT | FLOAT | STR | BOOL | LIST | BYTES
    default: Any  # None: unset (an optional value; TOML cannot write it)
    help: str
    choices: tuple[str, ...] = ()
    min: float | None = None  # value >= min
    max: float | None = None  # value <= max
    above: float | None = None  # value > above
    below: float | None = None  # value < below
    inf: bool = False  # FLOAT: ±inf accepted (NaN never is)
    flag: str | None = None  # the CLI flag; None: "--" + name with dashes; "" : config (or --method-option) only
    const: Any = None  # a flag that takes no value and stores `const`
    sep: str | None = None  # LIST: one CLI value split on `sep` (default: one value per word)
    metavar: str | None = None
    path: bool = False  # a path albat reads: resolved against the config file's directory

    @property
    def cli_flag(self) -> str | None:
        if self.flag == "":
            return None
        return self.flag or "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """The value converted to the option's type, or OptionError saying what is wrong with it."""
        if value is None and self.default is None:
            return None
        if self.kind == INT:
            number = _integer(value)
        elif self.kind == FLOAT:
            number = _number(value, self.inf)
        elif self.kind == BOOL:
            return _boolean(value)
        elif self.kind == LIST:
            return [_no_nul(v) for v in _strings(value)]
        elif self.kind == BYTES:
            return _size(value)
        else:
            if not isinstance(value, str):
                raise OptionError(f"{_kind_of(value)}, not a string")
            _no_nul(value)
            if self.choices and value not in self.choices:
                raise OptionError("not one of the choices")
            return value
        _check_range(self, number)
        return number

    def expect(self) -> str:
        """What the option accepts, e.g. 'an integer >= 1 (default 32)'."""
        what = {INT: "an integer", FLOAT: "a number" if self.inf else "a finite number", BOOL: "true or false",
                LIST: "a list of strings", BYTES: "a size such as 4GB or 512MiB", STR: "a string"}[self.kind]
        if self.choices:
            what = "one of " + ", ".join(self.choices)
        bounds = self.bounds()
        if bounds:
            what += " " + bounds
        if self.inf:
            what += " (inf allowed)"
        if self.default not in (None, "", []):
            what += f" (default {show(self.default)})"
        return what

    def bounds(self) -> str:
        """The range in words: '>= 1', 'within [0, 1]', '> 0', 'within [0, 1)'."""
        low = (f"[{_num(self.min)}" if self.min is not None else f"({_num(self.above)}" if self.above is not None
               else None)
        high = (f"{_num(self.max)}]" if self.max is not None else f"{_num(self.below)})" if self.below is not None
                else None)
        if low and high:
            return f"within {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        if high:
            return ("<= " if high[-1] == "]" else "< ") + high[:-1]
        return ""


def _num(x: float | None) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def printable(text: str) -> str:
    """Control characters as \\uXXXX, so a message holding the text stays one line."""
    return "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)


def show(value: Any) -> str:
    """A value as TOML writes it: "text", true, 0.5, inf, ["a", "b"]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # TOML's basic string: control characters as \\uXXXX, so an error stays one line
        return '"' + printable(value.replace("\\", "\\\\").replace('"', '\\"')) + '"'
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def _kind_of(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise OptionError(f"{_kind_of(value)}, not an integer")
    if isinstance(value, int):
        return value
    try:
        return int(value.strip())
    except ValueError:
        raise OptionError("not an integer") from None


def _number(value: Any, inf: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise OptionError(f"{_kind_of(value)}, not a number")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        raise OptionError("not a number") from None
    if math.isnan(number):
        raise OptionError("not a number (NaN)")
    if math.isinf(number) and not inf:
        raise OptionError("not finite")
    return number


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise OptionError(f"{_kind_of(value)}, not true or false")


def _no_nul(text: str) -> str:
    """No path, name or column holds a NUL character; the OS refuses it deep inside otherwise."""
    if "\x00" in text:
        raise OptionError("holds a NUL character (\\x00)")
    return text


def _strings(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise OptionError(f"{_kind_of(value)}, not a string or a list of strings")
    return list(items)


def _size(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise OptionError(f"{_kind_of(value)}, not a size")
    try:
        parse_bytes(value)
    except AlbatError:
        raise OptionError("not understood as a size") from None
    return value


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


def _check_range(option: Option, number: float) -> None:
    too_low = ((option.min is not None and number < option.min) or
               (option.above is not None and number <= option.above))
    too_high = ((option.max is not None and number > option.max) or
                (option.below is not None and number >= option.below))
    if too_low or too_high:
        raise OptionError("too small" if too_low else "too large")


def defaults(options: Iterable[Option]) -> dict[str, Any]:
    """name -> default (lists copied, so a caller can change its own)."""
    return {o.name: list(o.default) if isinstance(o.default, list) else o.default for o in options}


def by_name(options: Iterable[Option]) -> dict[str, Option]:
    return {o.name: o for o in options}


FORMATS = ("auto", "parquet", "jsonl", "csv", "tsv", "hf", "txt")  # stores.sources.FORMATS (kept light here)
IMAGE_FORMATS = ("imagefolder", "webdataset")  # --modality image (stores/image_corpus.py); parquet too
CHAT_TEMPLATES = ("lines", "content", "user")  # stores.chat.TEMPLATES

TOP = (
    Option("work", STR, "work", "work directory", metavar="DIR"),
    Option("seed", INT, 0, "seed of every random choice (recorded in the manifest)", min=0),
    Option("task", STR, "default", "task name: its query, filter and output live in WORK/tasks/NAME/ over the "
           "work directory's one store and index", metavar="NAME"),
    Option("executor", STR, "local", "where the corpus passes run (embed's shards, query's duplicate scan, dsir's "
           "passes): local (this process) or ray (Ray Data)", choices=("local", "ray")),
    Option("ray_address", STR, None, "ray: cluster address, e.g. ray://head:10001 or auto (unset: start a local Ray)"),
    Option("ray_cpus", INT, 0, "ray: CPUs of the local Ray it starts (0: all cores)", min=0),
)

EMBED = (
    Option("input", LIST, [], "corpus files, globs, directories, a saved HF dataset, URLs (fsspec) or hub:NAME",
           path=True, metavar="PATH"),
    Option("format", STR, "auto", "corpus format (auto: by suffix; .gz/.zst compression by suffix)",
           choices=FORMATS + IMAGE_FORMATS),
    Option("text_column", STR, "text", "column holding the text (or chat messages: a list of {role, content}; "
           "image corpora: the caption)"),
    Option("chat_template", STR, "lines", "how a chat column is embedded: lines ('role: content' per message), "
           "content (contents only) or user (user turns only); query renders adaptation chats the same way",
           choices=CHAT_TEMPLATES),
    Option("modality", STR, "text", "text: sentence-transformers; image: image-caption pairs through open_clip",
           choices=("text", "image")),
    Option("image_model", STR, "ViT-B-32", "image: open_clip model name or model-config .json"),
    Option("image_pretrained", STR, None, "image: open_clip pretrained tag (local cache) or checkpoint file "
           "(unset: seeded random weights)"),
    Option("image_column", STR, "image", "image: Parquet column of image bytes, paths or {bytes, path}"),
    Option("image_workers", INT, 2, "image: decoding/preprocessing worker processes (0: in this process)", min=0),
    Option("pair_column", STR, None, "column with the query side of (query, text) pairs, embedded too"),
    Option("id_column", STR, None, "integer id column to keep as albat_id (unset: row number)"),
    Option("keep_columns", LIST, [], "extra columns to carry to the shards (CLI: comma-separated)", sep=","),
    Option("encoder", STR, "all-MiniLM-L6-v2", "sentence-transformers model path or cached name"),
    Option("batch_size", INT, 64, "encoder batch size", min=1),
    Option("shard_rows", INT, 8192, "rows per embedding shard", min=1),
    Option("dtype", STR, "auto", "encoder compute precision (stored vectors stay float32)",
           choices=("auto", "float32", "bfloat16", "float16", "int8")),
    Option("backend", STR, "auto", "encoder runtime", choices=("auto", "torch", "onnx")),
    Option("probe_rows", INT, 128, "corpus texts timed per runtime when both --backend and --dtype are auto", min=1),
    Option("probe_cache", BOOL, True, "reuse the runtime this machine measured before for the same encoder and "
           "settings (false: time it again)"),
    Option("device", STR, "auto", "auto (CUDA when present), cpu, cuda, cuda:N"),
    Option("max_seq_length", INT, None, "truncate texts to this many tokens (unset: the encoder's)", min=1),
    Option("skip_empty", BOOL, False, "drop null/empty texts instead of failing", const=True),
    Option("max_text_bytes", INT, 1 << 20, "longest text accepted, in bytes (0: no limit)", min=0),
    Option("threads", INT, 0, "torch threads (0: all cores)", min=0),
    Option("ray_actors", INT, 1, "ray: encoder actors running at once", min=1),
    Option("ray_actor_cpus", FLOAT, 1.0, "ray: CPUs reserved per encoder actor", min=0),
    Option("ray_actor_gpus", FLOAT, 0.0, "ray: GPUs reserved per encoder actor (e.g. 1 with --device cuda)", min=0),
)

INDEX = (
    Option("memory_budget", BYTES, "4GB", "memory the index may use, e.g. 4GB or 512MiB"),
    Option("index_key", STR, None, "force a FAISS factory string, e.g. IVF1024,PQ48x8 (unset: albat plans)"),
    Option("index_type", STR, "auto", "auto: flat, else IVF-Flat, else IVF-PQ as the budget allows; flat, ivf or "
           "hnsw (HNSW32, if it fits the budget) ask for that kind", choices=("auto", "flat", "ivf", "hnsw")),
    Option("on_disk", BOOL, False, "IVF: build inverted lists per shard, merge them on disk (index/knn.ivfdata, "
           "memory-mapped); the budget bounds only what stays resident", const=True),
    Option("flat_max_rows", INT, 1_000_000, "largest corpus searched exactly", min=0),
    Option("recall_k", INT, 10, "k of the recall@k measurement", min=1),
    Option("recall_queries", INT, 1000, "corpus samples used to measure recall", min=1),
    Option("target_recall", FLOAT, 0.95, "recall nprobe is tuned to reach", min=0, max=1),
)

QUERY = (
    Option("adaptation", LIST, [], "adaptation examples (any --input format; every column is carried to the output)", path=True,
           metavar="PATH"),
    Option("format", STR, "auto", "adaptation format", choices=FORMATS + IMAGE_FORMATS, flag="--adaptation-format"),
    Option("text_column", STR, "text", "text column of the adaptation set", flag="--adaptation-text-column"),
    Option("pair_column", STR, None, "query-side column of the adaptation set (unset: the store's)",
           flag="--adaptation-pair-column"),
    Option("exclude", LIST, [], "evaluation examples whose duplicates must never be selected", path=True,
           metavar="PATH"),
    Option("exclude_text_column", STR, "text", "text column of the exclusion set"),
    Option("encoder", STR, None, "encoder for the queries; refused unless it is the store's (unset: the store's)",
           flag="--query-encoder"),
    Option("device", STR, "auto", "device for the query encoder", flag="--query-device"),
    Option("retrieve_by", STR, "auto", "image stores: what retrieves corpus rows; auto: images by images, captions "
           "alone by captions; image; caption: the adaptation captions retrieve corpus captions (text→text)",
           choices=("auto", "image", "caption")),
    Option("k", INT, 32, "neighbours retrieved per adaptation example", min=1),
    Option("dedup_threshold", FLOAT, 0.95, "cosine above which a corpus row is a near-duplicate", min=-1, max=1),
    Option("dedup_k", INT, 16, "neighbours checked for near-duplicates per example", min=1),
    Option("rerank_factor", INT, 4, "PQ index: retrieve k*factor, re-rank exactly", min=1),
    Option("dedup_candidates", BOOL, True, "block a candidate whose content (normalised text, or decoded pixels) "
           "equals a better candidate's, so no selection holds the same content twice",
           flag="--keep-duplicate-candidates", const=False),
)

FILTER = (
    Option("method", STR, "knn", "selection method: none, random, knn, dsir, classifier, gradalign, albat"),
    Option("budget", INT, 64, "number m of backbone examples to select", min=0),
    Option("threads", INT, None, "torch threads of the method (unset: 1 for small-op work, all cores for the lm "
           "surrogate; 0: all cores). On shared cores 1 avoids spinning threads", min=0, flag="--filter-threads"),
)

MIX = (
    Option("enabled", BOOL, False, "run: also run the mix stage between filter and emit (`albat mix` always runs it)",
           flag="--mix", const=True),
    Option("group_by", STR, None, "store column whose values group the selection (unset: k-means of the vectors)",
           flag="--mix-group-by", metavar="COLUMN"),
    Option("groups", INT, 4, "k-means clusters of the selected rows' vectors when no --mix-group-by", min=1,
           flag="--mix-groups"),
    Option("surrogate", STR, "contrastive", "the experts: contrastive adapters or lm LoRAs, one per group",
           choices=("contrastive", "lm"), flag="--mix-surrogate"),
    Option("model", STR, "", "lm experts: local Hugging Face causal-LM checkpoint directory",
           flag="--mix-model", metavar="DIR", path=True),
    Option("steps", INT, 200, "training steps of each expert (early-stopped on its group's held-out rows)", min=0,
           flag="--mix-steps"),
    Option("calibration_runs", INT, 0, "real mixture runs that calibrate the MDE estimate by regression (0: none)",
           min=0, flag="--calibration-runs"),
    Option("iterations", INT, 1000, "EM iterations of the simplex optimiser", min=1, flag=""),
)

EMIT = (
    Option("shard_rows", INT, 10_000, "rows per emitted Parquet shard", min=1, flag="--emit-shard-rows"),
    Option("include_adaptation", BOOL, True, "write the adaptation examples into the shards", flag="--no-adaptation",
           const=False),
    Option("backbone_weight", FLOAT, 1.0, "lambda: weight of the backbone part of the BAT loss", min=0),
    Option("output", STR, "output", "folder inside the task's folder (WORK/tasks/NAME/) for the published set"),
    Option("license", STR, "unknown", "licence written into the dataset card and manifest (e.g. cc-by-sa-4.0: "
           "the corpus's)"),
    Option("emit_format", STR, "parquet", "image stores: imagefolder also exports OUTPUT-imagefolder/ (images + "
           "metadata.jsonl, for diffusers' training scripts)", choices=("parquet", "imagefolder")),
)

# How a command runs, not what it computes: flags of every stage command (and `Pipeline(...)` keywords of
# the Python API), never part of a config file, a fingerprint or the manifest.
RUNTIME = (
    Option("quiet", BOOL, False, "no progress bars (they are also off when stderr is not a terminal)", const=True),
    Option("log_level", STR, "info", "log messages on stderr from this level up",
           choices=("debug", "info", "warning", "error")),
    Option("json", BOOL, False, "print one JSON summary object per stage on stdout (JSON Lines) instead of text",
           const=True),
    Option("force", BOOL, False, "rebuild even what is complete (embed: delete the store and re-embed, once the "
           "new input has been read through)", const=True),
)

# config section -> its options ("" is the top level); [filter] also holds the method's options
SECTIONS: dict[str, tuple[Option, ...]] = {"": TOP, "embed": EMBED, "index": INDEX, "query": QUERY,
                                           "filter": FILTER, "mix": MIX, "emit": EMIT}


def section_defaults() -> dict[str, Any]:
    """The config defaults: top-level values, then one table per stage."""
    out: dict[str, Any] = defaults(TOP)
    for section, options in SECTIONS.items():
        if section:
            out[section] = defaults(options)
    return out


def markdown_table(options: Sequence[Option], with_flags: bool = True) -> str:
    """A README table: key, CLI flag, accepted values, default, help."""
    head = ["key", "flag", "accepts", "default", "meaning"] if with_flags else ["key", "accepts", "default", "meaning"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for o in options:
        accepts = {INT: "integer", FLOAT: "number", BOOL: "bool", LIST: "list of strings", BYTES: "size",
                   STR: "string"}[o.kind]
        if o.choices:
            accepts = " \\| ".join(f"`{c}`" for c in o.choices)
        if o.bounds():
            accepts += " " + o.bounds()
        if o.kind == FLOAT:
            accepts += ", ±inf allowed" if o.inf else ", finite"
        default = "unset" if o.default is None else f"`{show(o.default)}`"
        row = [f"`{o.name}`"] + ([f"`{o.cli_flag}`" if o.cli_flag else ""] if with_flags else [])
        lines.append("| " + " | ".join(row + [accepts, default, o.help.replace("|", "\\|")]) + " |")
    return "\n".join(lines)


def unknown_key(source: str, label: str, known: Iterable[str], context: str = "") -> AlbatError:
    names = ", ".join(sorted(known)) or "none"
    return AlbatError(f"{source}: unknown key '{label}'{context} (known: {names}); fix the spelling or remove it")


def checked(option: Option, value: Any, source: str, label: str) -> Any:
    """`option.check(value)`, or a one-line AlbatError naming the source, the key, the value and the fix."""
    try:
        return option.check(value)
    except OptionError as exc:
        shown = printable(value) if source.startswith("--") and isinstance(value, str) else show(value)
        raise AlbatError(f"{source}: {label} = {shown}: {exc}; give {option.expect()}") from None


def check_given(options: Sequence[Option], given: dict[str, Any], source: Callable[[str], str], prefix: str = "",
                context: str = "", also_known: Iterable[str] = ()) -> dict[str, Any]:
    """The `given` values, each checked and converted by its option; an unknown key is an error
    listing the known ones. `source(label)` names where a value came from (a file, a flag);
    labels are `prefix` + key."""
    known = by_name(options)
    out = {}
    for key, value in given.items():
        label = prefix + key
        if key not in known:
            raise unknown_key(source(label), label, [*known, *also_known], context)
        out[key] = checked(known[key], value, source(label), label)
    return out


def resolve(options: Sequence[Option], given: dict[str, Any], source: str) -> dict[str, Any]:
    """Every option's default, updated with the `given` values, each checked."""
    return {**defaults(options), **check_given(options, given, lambda label: source)}
