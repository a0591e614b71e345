"""The `albat` command line. Heavy libraries load inside the stages, so `--help` is instant."""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from albat.pipeline.config import cli_options
from albat.pipeline.options import LIST, RUNTIME, Option, check_given, show
from albat.stores.errors import AlbatError

STAGES = ("embed", "index", "query", "filter", "mix", "emit")


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
    _add_runtime(parser)


def _add_runtime(parser: argparse.ArgumentParser, names: Sequence[str] = tuple(o.name for o in RUNTIME)) -> None:
    """The RUNTIME options' flags (pipeline.options): how a command runs, never part of a config."""
    for option in RUNTIME:
        if option.name in names:
            parser.add_argument(option.cli_flag, dest=_dest("run", option.name), default=None, **_flag_kwargs(option))


def runtime_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The RUNTIME options given on the command line, checked by the schema, over their defaults."""
    given = {o.name: getattr(args, _dest("run", o.name)) for o in RUNTIME
             if getattr(args, _dest("run", o.name), None) is not None}
    flags = {o.name: o.cli_flag for o in RUNTIME}
    return {**{o.name: o.default for o in RUNTIME}, **check_given(RUNTIME, given, lambda label: flags[label])}


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
             "mix": "weight the selection's groups by Mixtures of Data Experts (only when asked)",
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
                       description="Views: corpus, candidates, candidate_pairs, blocked, adaptation, selection, mix, "
                       "mix_groups, shards.")
    p.add_argument("work", help="work directory")
    p.add_argument("query", help="one SELECT statement")
    p.add_argument("--task", default="default", metavar="NAME", help="the task whose tables the views show "
                   "(default: default)")
    p.add_argument("--out", help="write the result to a .csv or .parquet file instead of printing it (Parquet keeps "
                   "list and struct columns; CSV refuses them)")
    p = sub.add_parser("diagnose", help="the auto chooser's table and whether augmentation helps, before selecting",
                       description="Cross-validate every candidate method on the adaptation set (as --method auto) "
                       "over a grid of budgets and λ; needs a completed query stage; writes nothing.")
    p.add_argument("work", help="work directory")
    p.add_argument("--config", help="TOML config (its [filter] budget, seed and auto options; its [emit] λ)")
    p.add_argument("--seed", type=int, help="seed of the folds and of every method")
    p.add_argument("--budgets", type=lambda v: [int(x) for x in _csv(v)], help="comma-separated m (default m/4,m,4m)")
    p.add_argument("--lams", type=lambda v: [float(x) for x in _csv(v)], help="comma-separated λ (default: auto's lambdas option if set, else λ/2,λ,2λ)")
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of auto, or METHOD.KEY of a candidate method (repeatable)")
    p.add_argument("--task", default=None, metavar="NAME", help="the task whose query outputs to use (default: "
                   "the config's, else default)")
    p.add_argument("--json", help="also write every table and the prediction to this JSON file")
    p = sub.add_parser("report", help="write a self-contained HTML page of one run (plots, reasons, manifest)",
                       description="Counts at each stage, a 2-D projection of the adaptation, candidate and selected "
                       "examples, every score's histogram with its thresholds, the reasons grouped by kind, the "
                       "nearest selected rows of a sample of adaptation examples, the composition by source and "
                       "the manifest; PNGs embedded. Needs completed query and filter stages; writes only --out.")
    p.add_argument("work", help="work directory")
    p.add_argument("--task", default="default", help="the task to report on (default: default)")
    p.add_argument("--out", help="the HTML file to write (default: WORK/report.html)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples drawn (projection, nearest examples)")
    p = sub.add_parser("verify", help="check every file of a work directory against its checksums and the store",
                       description="Exit 0: no drift; 1: drift found (each line names the file and the fix).")
    p.add_argument("work", help="work directory")
    p.add_argument("--task", default=None, metavar="NAME", help="check the store, the index and this task only "
                   "(default: every task)")
    p.add_argument("--quiet", action="store_true", help="print only the problems and the verdict")
    return parser


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {s: {} for s in STAGES}
    for section, options in cli_options().items():
        for option in options:
            value = getattr(args, _dest(section, option.name), None)
            if value is not None:
                (overrides[section] if section else overrides)[option.name] = value
    overrides["filter"].update(method_option_values(getattr(args, "method_option", []) or []))
    return overrides


def method_option_values(items: Sequence[str]) -> dict[str, str]:
    """`--method-option KEY=VALUE` items -> {KEY: VALUE}; the values stay strings for the options' schema."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AlbatError(f"--method-option '{item}' must look like KEY=VALUE")
        options[key] = value
    return options


def run_stages(stages: Sequence[str], config: dict[str, Any], show_progress: bool = True, force: bool = False,
               as_json: bool = False) -> dict[str, Any]:
    """Run stages in order (albat.api.run_stages); print each one's summary as it finishes: one text
    line, or (`as_json`) one JSON object on stdout, the text line then going to the log."""
    import json

    from albat.api import run_stages as run_api
    from albat.pipeline.progress import log

    def show(result: Any) -> None:
        if as_json:
            print(json.dumps(result.to_dict(), default=str), flush=True)
            log.info(result.line())
        else:
            print(result.line(), flush=True)

    results = run_api(stages, config, show_progress=show_progress, force=force, on_result=show)
    return {stage: result.summary for stage, result in results.items()}


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
        if args.command in ("sql", "report", "verify"):
            from albat.stores.remote import local_work

            args.work = local_work(args.work)
        if args.command == "sql":
            from albat.pipeline.sql import run_sql

            print(run_sql(args.work, args.query, out=args.out, task=args.task), flush=True)
            return 0
        if args.command == "report":
            from albat.pipeline.report import write_report

            print(f"report: {write_report(args.work, out=args.out, seed=args.seed, task=args.task)}", flush=True)
            return 0
        if args.command == "verify":
            from albat.pipeline.verify import run_verify

            findings, report = run_verify(args.work, quiet=args.quiet, task=args.task)
            print(report, flush=True)
            return 1 if any(f.level == "drift" for f in findings) else 0
        from albat.pipeline.config import load_config

        if args.command == "diagnose":
            from albat.pipeline.diagnose import run_diagnose

            options = method_option_values(args.method_option)
            given = {"work": args.work, **({"seed": args.seed} if args.seed is not None else {}),
                     **({"task": args.task} if args.task is not None else {})}
            config = load_config(args.config, given)
            from albat.stores.remote import local_work

            config["work"] = local_work(config["work"])
            print(run_diagnose(config, args.budgets, args.lams, options, out=args.json), flush=True)
            return 0
        from albat.pipeline.progress import configure_logging, log

        runtime = runtime_from_args(args)
        configure_logging(runtime["log_level"])
        config = load_config(args.config, overrides_from_args(args))
        stages = ((tuple(s for s in STAGES if s != "mix" or config["mix"]["enabled"]) if args.command == "run"
                  else (args.command,)))
        run_stages(stages, config, show_progress=not runtime["quiet"], force=runtime["force"], as_json=runtime["json"])
        if args.command in ("run", "emit"):
            from albat.stores.remote import is_work_url

            where = f"tasks/{config['task']}/{config['emit']['output']}"
            output = f"{config['work'].rstrip('/')}/{where}" if is_work_url(config["work"]) else Path(config["work"]) / where
            task = "" if config["task"] == "default" else f" --task {config['task']}"
            hint = (f"shards: {output}/data (open that folder with any Parquet reader; manifest.json and the dataset "
                    f"card README.md beside it); inspect with: albat sql {config['work']}{task} \"SELECT * FROM shards "
                    "LIMIT 5\"")
            log.info(hint) if runtime["json"] else print(hint)
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
