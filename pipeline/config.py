"""One TOML config for every stage; CLI flags override it; the effective config is recorded.

Sections mirror the stages; every key, its type, range and default is declared in
pipeline.options ([filter] also takes the chosen method's options). Unknown keys and bad values
are errors before any stage runs (a typo must not silently use a default), and relative paths in
a config file are resolved against the file's directory.

Path rule: paths albat reads (inputs, adaptation and evaluation sets, a local encoder) may be
anywhere and are checked when a stage reads them. Everything albat writes lies inside the work
directory, under fixed names, except `emit.output`, the one write location a config chooses: it
is resolved against the task's folder (WORK/tasks/NAME/) and refused if it leaves it (an absolute
path elsewhere, `..`, a symlink out) or names the task's own folders (query, filter, _stages), so no config, however it was obtained, can make
albat replace (swap away and delete) a directory outside its work directory.
"""
from __future__ import annotations

import copy
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from albat.pipeline.options import FILTER, SECTIONS, TOP, Option, check_given, parse_bytes, section_defaults, show
from albat.pipeline.surrogates.options import SURROGATE_OPTIONS
from albat.stores.errors import AlbatError
from albat.stores.workdir import TASK_FOLDERS, check_task_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULTS: dict[str, Any] = section_defaults()  # declared in pipeline.options


def _method_options(config: dict[str, Any]) -> tuple[str, tuple[Option, ...]]:
    """The chosen method and the options [filter] may hold for it: the filter stage's, then the method's."""
    from albat.pipeline.methods.base import method_class

    method = config.get("filter", {}).get("method", DEFAULTS["filter"]["method"])
    if not isinstance(method, str):
        raise AlbatError(f"filter.method = {show(method)}: not a string; give a method name such as knn")
    return method, FILTER + method_class(method).OPTIONS


def _takes_prefixed(method: str) -> bool:
    """Whether a method (auto) takes `METHOD.KEY` options for the methods it chooses among."""
    from albat.pipeline.methods.base import method_class

    return bool(getattr(method_class(method), "PREFIXED_OPTIONS", False))


def check_values(given: dict[str, Any], method: str, filter_options: tuple[Option, ...],
                 source: Callable[[str], str]) -> dict[str, Any]:
    """Every value of a config (file or CLI overrides) checked and converted; `source(label)` names
    where a value came from, for the error."""
    sections = [s for s in SECTIONS if s]
    out = check_given(TOP, {k: v for k, v in given.items() if k not in sections}, source, also_known=sections)
    for section in sections:
        if section not in given:
            continue
        if not isinstance(given[section], dict):
            raise AlbatError(f"{source(section)}: '{section}' must be a [{section}] table; write its keys under a "
                             f"[{section}] line")
        options, context = (filter_options, f" for method {method}") if section == "filter" else (SECTIONS[section], "")
        values, passed = dict(given[section]), {}
        if section == "filter" and _takes_prefixed(method):  # METHOD.KEY: checked by that method when built
            passed = {k: values.pop(k) for k in list(values) if "." in k}
        out[section] = {**check_given(options, values, source, f"{section}.", context), **passed}
    return out


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif value is not None:
            out[key] = value
    return out


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    """CLI overrides without the flags not given (None)."""
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in values.items() if v is not None}


def _resolve_paths(values: dict[str, Any], filter_options: tuple[Option, ...], base_dir: Path) -> None:
    """Relative paths albat reads (and `work`), resolved against the config file's directory; URLs
    (`scheme://...`) and Hub names (`hub:NAME`) are left as written."""
    def resolve(value: str) -> str:
        if Path(value).is_absolute() or re.match(r"^([A-Za-z][A-Za-z0-9+.-]*://|hub:)", value):
            return value
        return os.path.normpath(base_dir / value)

    for section, options in SECTIONS.items():
        table = values if not section else values.get(section, {})
        for option in filter_options if section == "filter" else options:
            if (option.path or option.name == "work" and not section) and table.get(option.name):
                value = table[option.name]
                table[option.name] = [resolve(v) for v in value] if isinstance(value, list) else resolve(value)


def check_output_path(config: dict[str, Any], source: str) -> None:
    """Refuse an emit.output that leaves the task's folder (WORK/tasks/NAME/) or names one of the
    task's own folders (query, filter, _stages)."""
    work = Path(config["work"])
    task = work / "tasks" / config["task"]
    value = str(config["emit"]["output"])
    target = Path(os.path.normpath(task / value))
    inside = os.path.realpath(target).startswith(os.path.realpath(task) + os.sep)
    if not value or not inside or target.relative_to(task).parts[0] in TASK_FOLDERS:
        why = "is not inside" if not value or not inside else "would replace albat's own folder in"
        raise AlbatError(f"{source}: emit.output '{value}' {why} the task's folder {task}; albat writes "
                         "only there: give a relative name such as 'output' or 'sets/knn' (copy or link "
                         "the published set elsewhere)")


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None,
                where: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Defaults, then the TOML file (paths relative to it), then CLI overrides (None: not given);
    every value checked against its option (pipeline.options) before any stage runs, an error
    naming the file or the flag that gave it (`where(label)`: who gave an override, for callers
    other than the CLI, e.g. the Python API)."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise AlbatError(f"{path}: config file not found; check the --config path") from None
        except tomllib.TOMLDecodeError as exc:
            raise AlbatError(f"{path}: invalid TOML ({exc}); fix the syntax") from None
    overrides = _without_none(overrides or {})
    chosen = _merge(raw, overrides)
    if "filter" in chosen and not isinstance(chosen["filter"], dict):
        chosen.pop("filter")  # reported as "must be a [filter] table" below
    method, filter_options = _method_options(chosen)
    flag_of = cli_flags()
    raw = check_values(raw, method, filter_options, lambda label: str(path))
    if path is not None:
        raw.setdefault("work", DEFAULTS["work"])  # the default work directory too lies beside the config
        _resolve_paths(raw, filter_options, path.resolve().parent)
    overrides = check_values(overrides, method, filter_options,
                             where or (lambda label: flag_of.get(label, "--method-option")))
    config = _merge(_merge(DEFAULTS, raw), overrides)
    from albat.pipeline.filter import method_options
    from albat.pipeline.methods.base import get_method

    get_method(method, **method_options(config["filter"]))  # the method's own checks across its options
    try:
        check_task_name(config["task"])
    except AlbatError as exc:
        raise AlbatError(f"{'--task' if 'task' in overrides or path is None else path}: {exc}") from None
    from_cli = bool(overrides.get("emit", {}).get("output"))
    check_output_path(config, (where("emit.output") if where else "--output") if from_cli or path is None else str(path))
    config["index"]["memory_budget_bytes"] = parse_bytes(config["index"]["memory_budget"])
    return config


def cli_options() -> dict[str, tuple[Option, ...]]:
    """Per section, the options with a CLI flag: [filter] gets the surrogate's `--surrogate` and
    `--surrogate-model` beside its own; the other method options go through `--method-option`."""
    extra = {"filter": tuple(o for o in SURROGATE_OPTIONS if o.cli_flag)}
    return {s: tuple(o for o in options + extra.get(s, ()) if o.cli_flag) for s, options in SECTIONS.items()}


def cli_flags() -> dict[str, str]:
    """Config label ('query.k') -> its CLI flag ('--k')."""
    return {(f"{s}.{o.name}" if s else o.name): o.cli_flag for s, options in cli_options().items() for o in options}
