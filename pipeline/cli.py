"""The `albat` command line. Heavy libraries load inside the stages, so `--help` is instant."""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from pipeline.config import cli_options
from pipeline.options import LIST, Option, show
from stores.errors import AlbatError

STAGES = ("embed", "index", "query", "filter", "emit")


def _csv(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def _dest(stage: str, key: str) -> str:
    return f"{stage}__{key}"


def _flag_kwargs(option: Option) -> dict[str, Any]:
    """argparse keywords for an option's flag. Values stay strings: the schema checks and converts
    them (one-line errors, not argparse's usage text)."""
    if option.const is not None:
        text = f"set {option.name} to {show(option.const)} ({option.help})"
        return {"help": text.replace("%", "%%"), "action": "store_const", "const": option.const}
    kwargs: dict[str, Any] = {"help": f"{option.help}: {option.expect()}".replace("%", "%%")}
    if option.kind == LIST:
        kwargs.update(type=_csv) if option.sep else kwargs.update(nargs="+")
    if option.choices:
        kwargs["metavar"] = "{" + ",".join(option.choices) + "}"
    else:
        kwargs["metavar"] = option.metavar or option.name.upper()
    return kwargs


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config holding every option (flags override it)")
    for option in cli_options()[""]:
        parser.add_argument(option.cli_flag, dest=_dest("", option.name), default=None, **_flag_kwargs(option))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--force", action="store_true", help="rebuild even what is complete (embed: delete the "
                        "store and re-embed, once the new input has been read through)")


def _add_stage_options(parser: argparse.ArgumentParser, stages: Sequence[str]) -> None:
    for stage in stages:
        group = parser.add_argument_group(stage)
        for option in cli_options()[stage]:
            group.add_argument(option.cli_flag, dest=_dest(stage, option.name), default=None, **_flag_kwargs(option))
    if "filter" in stages:
        parser.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                            help="an option of the selection method (repeatable)")


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


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {s: {} for s in STAGES}
    for section, options in cli_options().items():
        for option in options:
            value = getattr(args, _dest(section, option.name), None)
            if value is not None:
                (overrides[section] if section else overrides)[option.name] = value
    for item in getattr(args, "method_option", []) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AlbatError(f"--method-option '{item}' must look like KEY=VALUE")
        overrides["filter"][key] = value  # a string: the method's option schema parses it
    return overrides


def run_stages(stages: Sequence[str], config: dict[str, Any], show_progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Run stages in order under the work directory's writer lock; print one summary line each."""
    from pipeline.stage import run_stage, stage_class
    from stores.workdir import Workdir

    work = Workdir(config["work"], output=config["emit"]["output"])
    work.lock()
    results = {}
    try:
        for stage in stages:
            result = run_stage(stage_class(stage)(config, work, show_progress=show_progress, force=force))
            results[stage] = result
            state = "skipped (complete)" if result.pop("skipped", False) else "done"
            details = ", ".join(f"{k}={v}" for k, v in result.items())
            print(f"{stage}: {state}: {details}", flush=True)
    finally:
        work.unlock()
    return results


_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines splits on


def one_line(text: str) -> str:
    """`text` with every line break escaped (a value quoted in an error may hold one)."""
    return "".join(c.encode("unicode_escape").decode() if c in _LINE_BREAKS else c for c in text)


_OS_FIXES = {
    errno.ENOSPC: "free space on that file system (or use another --work) and rerun the same command; it resumes",
    errno.EDQUOT: "free space within your quota (or use another --work) and rerun the same command; it resumes",
    errno.EROFS: "the file system is read-only: remount it writable or use another --work, then rerun",
    errno.EACCES: "fix the permissions (or use another path) and rerun",
    errno.EPERM: "fix the permissions (or use another path) and rerun",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) and rerun",
    errno.ENFILE: "the system ran out of file handles: close other programs and rerun",
}


def os_error_line(exc: OSError) -> str:
    """One line for an OS error: the path, what the system said, and the fix."""
    reason = exc.strerror or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    where = f"{exc.filename}: " if exc.filename else ""
    fix = _OS_FIXES.get(exc.errno or 0, "fix the cause and rerun the same command")
    return f"{where}{reason}; {fix}"


def _closed_pipe() -> int:
    """The reader of our output went away (`albat sql ... | head -1`): stop quietly, as a program
    killed by SIGPIPE would, and keep the interpreter from complaining when it flushes stdout."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "sql":
            from pipeline.sql import run_sql

            print(run_sql(args.work, args.query, out=args.out), flush=True)
            return 0
        if args.command == "verify":
            from pipeline.verify import run_verify

            findings, report = run_verify(args.work, quiet=args.quiet)
            print(report, flush=True)
            return 1 if any(f.level == "drift" for f in findings) else 0
        from pipeline.config import load_config

        if args.command == "diagnose":
            from pipeline.diagnose import run_diagnose

            options = {}
            for item in args.method_option:
                key, sep, value = item.partition("=")
                if not sep or not key:
                    raise AlbatError(f"--method-option '{item}' must look like KEY=VALUE")
                options[key] = value  # a string: the options' schema parses it
            config = load_config(args.config, {"work": args.work, **({"seed": args.seed} if args.seed is not None else {})})
            print(run_diagnose(config, args.budgets, args.lams, options, out=args.json), flush=True)
            return 0
        config = load_config(args.config, overrides_from_args(args))
        stages = STAGES if args.command == "run" else (args.command,)
        run_stages(stages, config, show_progress=not args.quiet, force=args.force)
        if args.command in ("run", "emit"):
            print(f"shards: {Path(config['work']) / config['emit']['output']} (manifest.json lists them); inspect with: "
                  f"albat sql {config['work']} \"SELECT * FROM shards LIMIT 5\"")
        return 0
    except AlbatError as exc:
        print(f"albat: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _closed_pipe()
    except OSError as exc:
        print(f"albat: error: {one_line(os_error_line(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("albat: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
