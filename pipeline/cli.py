"""The `albat` command line. Heavy libraries load inside the stages, so `--help` is instant."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from stores.errors import AlbatError

STAGES = ("embed", "index", "query", "filter", "emit")


def _csv(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


# (stage, flag, config key, argparse kwargs): one table drives the stage commands and `run`.
OPTIONS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("embed", "--input", "input", dict(nargs="+", help="corpus files, globs, directories or a saved HF dataset")),
    ("embed", "--format", "format", dict(choices=["auto", "parquet", "jsonl", "hf", "txt"], help="corpus format (default: by suffix)")),
    ("embed", "--text-column", "text_column", dict(help="column holding the text (default: text)")),
    ("embed", "--pair-column", "pair_column", dict(help="column with the query side of (query, text) pairs, embedded too")),
    ("embed", "--id-column", "id_column", dict(help="integer id column to keep as albat_id (default: row number)")),
    ("embed", "--keep-columns", "keep_columns", dict(type=_csv, help="comma-separated extra columns to carry to the shards")),
    ("embed", "--encoder", "encoder", dict(help="sentence-transformers model path or cached name (default: bundled all-MiniLM-L6-v2)")),
    ("embed", "--batch-size", "batch_size", dict(type=int, help="encoder batch size")),
    ("embed", "--shard-rows", "shard_rows", dict(type=int, help="rows per embedding shard")),
    ("embed", "--dtype", "dtype", dict(choices=["float32", "bfloat16", "float16"], help="encoder compute precision")),
    ("embed", "--device", "device", dict(help="auto (CUDA when present), cpu, cuda, cuda:N")),
    ("embed", "--max-seq-length", "max_seq_length", dict(type=int, help="truncate texts to this many tokens")),
    ("embed", "--skip-empty", "skip_empty", dict(action="store_const", const=True, help="drop null/empty texts instead of failing")),
    ("embed", "--max-text-bytes", "max_text_bytes", dict(type=int, help="longest text accepted, in bytes (default 1 MiB; 0: no limit)")),
    ("embed", "--threads", "threads", dict(type=int, help="torch threads (0: all cores)")),
    ("index", "--memory-budget", "memory_budget", dict(help="memory the index may use, e.g. 4GB (default 4GB)")),
    ("index", "--index-key", "index_key", dict(help="force a FAISS factory string, e.g. IVF1024,PQ48x8")),
    ("index", "--flat-max-rows", "flat_max_rows", dict(type=int, help="largest corpus searched exactly")),
    ("index", "--recall-k", "recall_k", dict(type=int, help="k of the recall@k measurement")),
    ("index", "--recall-queries", "recall_queries", dict(type=int, help="corpus samples used to measure recall")),
    ("index", "--target-recall", "target_recall", dict(type=float, help="recall nprobe is tuned to reach")),
    ("query", "--adaptation", "adaptation", dict(nargs="+", help="adaptation examples (Parquet, JSONL, HF dir, or text one a line)")),
    ("query", "--adaptation-format", "format", dict(choices=["auto", "parquet", "jsonl", "hf", "txt"], help="adaptation format")),
    ("query", "--adaptation-text-column", "text_column", dict(help="text column of the adaptation set")),
    ("query", "--adaptation-pair-column", "pair_column", dict(help="query-side column of the adaptation set (default: the store's)")),
    ("query", "--exclude", "exclude", dict(nargs="+", help="evaluation examples whose duplicates must never be selected")),
    ("query", "--exclude-text-column", "exclude_text_column", dict(help="text column of the exclusion set")),
    ("query", "--query-encoder", "encoder", dict(help="encoder for the queries; refused unless it is the store's")),
    ("query", "--query-device", "device", dict(help="device for the query encoder (default auto)")),
    ("query", "--k", "k", dict(type=int, help="neighbours retrieved per adaptation example")),
    ("query", "--dedup-threshold", "dedup_threshold", dict(type=float, help="cosine above which a corpus row is a near-duplicate")),
    ("query", "--dedup-k", "dedup_k", dict(type=int, help="neighbours checked for near-duplicates per example")),
    ("query", "--rerank-factor", "rerank_factor", dict(type=int, help="PQ index: retrieve k*factor, re-rank exactly")),
    ("filter", "--method", "method", dict(help="selection method: none, random, knn, dsir, classifier, gradalign, albat, auto")),
    ("filter", "--surrogate", "surrogate", dict(choices=["contrastive", "lm"], help="albat/gradalign surrogate: contrastive (store embeddings) or lm (causal LM + LoRA)")),
    ("filter", "--surrogate-model", "model", dict(metavar="DIR", help="lm surrogate: local Hugging Face causal-LM checkpoint directory")),
    ("filter", "--budget", "budget", dict(type=int, help="number m of backbone examples to select")),
    ("emit", "--emit-shard-rows", "shard_rows", dict(type=int, help="rows per emitted Parquet shard")),
    ("emit", "--no-adaptation", "include_adaptation", dict(action="store_const", const=False, help="do not write the adaptation examples into the shards")),
    ("emit", "--backbone-weight", "backbone_weight", dict(type=float, help="lambda: weight of the backbone part of the BAT loss")),
    ("emit", "--output", "output", dict(help="folder inside the work directory for the shard set (default output)")),
]


def _dest(stage: str, key: str) -> str:
    return f"{stage}__{key}"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config holding every option (flags override it)")
    parser.add_argument("--work", help="work directory (default: ./work)")
    parser.add_argument("--seed", type=int, help="seed of every random choice (recorded in the manifest)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_stage_options(parser: argparse.ArgumentParser, stages: Sequence[str]) -> None:
    for stage in stages:
        group = parser.add_argument_group(stage)
        for opt_stage, flag, key, kwargs in OPTIONS:
            if opt_stage == stage:
                group.add_argument(flag, dest=_dest(stage, key), default=None, **kwargs)
    if "filter" in stages:
        parser.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                            help="an option of the selection method (repeatable)")
    if "embed" in stages:
        parser.add_argument("--force", action="store_true", help="delete an existing store and re-embed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="albat", description="Select backbone-corpus examples that help a "
                                     "scarce-data adaptation: embed -> index -> query -> filter -> emit.")
    parser.add_argument("--version", action="version", version="albat 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {"embed": "embed the backbone corpus into the embedding store",
             "index": "build the FAISS index and measure its recall",
             "query": "retrieve candidates for the adaptation examples",
             "filter": "select up to a budget of candidates with a method",
             "emit": "write the selection as Parquet shards with a manifest"}
    for stage in STAGES:
        p = sub.add_parser(stage, help=helps[stage], description=helps[stage])
        _add_common(p)
        _add_stage_options(p, [stage])
    p = sub.add_parser("run", help="run every stage in order, skipping what is complete",
                       description="run every stage in order, skipping what is complete")
    _add_common(p)
    _add_stage_options(p, STAGES)
    p = sub.add_parser("sql", help="read-only DuckDB query over a work directory",
                       description="Views: corpus, candidates, candidate_pairs, blocked, adaptation, selection, shards.")
    p.add_argument("work", help="work directory")
    p.add_argument("query", help="one SELECT statement")
    p.add_argument("--out", help="write the result to a .csv or .parquet file instead of printing it")
    p = sub.add_parser("diagnose", help="the auto chooser's table and whether augmentation helps, before selecting",
                       description="Cross-validate every candidate method on the adaptation set (as --method auto) "
                       "over a grid of budgets and λ; needs a completed query stage; writes nothing.")
    p.add_argument("work", help="work directory")
    p.add_argument("--config", help="TOML config (its [filter] budget, seed and auto options; its [emit] λ)")
    p.add_argument("--seed", type=int, help="seed of the folds and of every method")
    p.add_argument("--budgets", type=lambda v: [int(x) for x in _csv(v)], help="comma-separated m (default m/4,m,4m)")
    p.add_argument("--lams", type=lambda v: [float(x) for x in _csv(v)], help="comma-separated λ (default λ/2,λ,2λ)")
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of auto, or METHOD.KEY of a candidate method (repeatable)")
    p.add_argument("--json", help="also write every table and the prediction to this JSON file")
    p = sub.add_parser("verify", help="check every file of a work directory against its checksums and the store",
                       description="Exit 0: no drift; 1: drift found (each line names the file and the fix).")
    p.add_argument("work", help="work directory")
    p.add_argument("--quiet", action="store_true", help="print only the problems and the verdict")
    return parser


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {s: {} for s in STAGES}
    for stage, _, key, _ in OPTIONS:
        value = getattr(args, _dest(stage, key), None)
        if value is not None:
            overrides[stage][key] = value
    for item in getattr(args, "method_option", []) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AlbatError(f"--method-option '{item}' must look like KEY=VALUE")
        overrides["filter"][key] = _parse_value(value)
    if args.work is not None:
        overrides["work"] = args.work
    if args.seed is not None:
        overrides["seed"] = args.seed
    return overrides


def _stage_runner(stage: str) -> Callable[..., dict[str, Any]]:
    import importlib

    return getattr(importlib.import_module(f"pipeline.{stage}"), f"run_{stage}")


def run_stages(stages: Sequence[str], config: dict[str, Any], show_progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Run stages in order under the work directory's writer lock; print one summary line each."""
    from stores.workdir import Workdir

    work = Workdir(config["work"], output=config["emit"]["output"])
    work.lock()
    results = {}
    try:
        for stage in stages:
            kwargs = {"force": force} if stage == "embed" else {}
            result = _stage_runner(stage)(config, work, show_progress=show_progress, **kwargs)
            results[stage] = result
            state = "skipped (complete)" if result.pop("skipped", False) else "done"
            details = ", ".join(f"{k}={v}" for k, v in result.items())
            print(f"{stage}: {state}: {details}", flush=True)
    finally:
        work.unlock()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "sql":
            from pipeline.sql import run_sql

            print(run_sql(args.work, args.query, out=args.out))
            return 0
        if args.command == "verify":
            from pipeline.verify import run_verify

            findings, report = run_verify(args.work, quiet=args.quiet)
            print(report)
            return 1 if any(f.level == "drift" for f in findings) else 0
        from pipeline.config import load_config

        if args.command == "diagnose":
            from pipeline.diagnose import run_diagnose

            options = {k: _parse_value(v) for k, _, v in (o.partition("=") for o in args.method_option)}
            config = load_config(args.config, {"work": args.work, **({"seed": args.seed} if args.seed is not None else {})})
            print(run_diagnose(config, args.budgets, args.lams, options, out=args.json))
            return 0
        config = load_config(args.config, overrides_from_args(args))
        stages = STAGES if args.command == "run" else (args.command,)
        run_stages(stages, config, show_progress=not args.quiet, force=getattr(args, "force", False))
        if args.command in ("run", "emit"):
            print(f"shards: {Path(config['work']) / config['emit']['output']} (manifest.json lists them); inspect with: "
                  f"albat sql {config['work']} \"SELECT * FROM shards LIMIT 5\"")
        return 0
    except AlbatError as exc:
        print(f"albat: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("albat: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
