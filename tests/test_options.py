"""The option schema (pipeline.options): every declaration is sound, every method refuses a
misspelt key naming its known ones, bad types and ranges are one-line errors through the real CLI
before any stage runs (exit 2, the work directory unchanged), valid values keep working, and the
README's tables are the schema's."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import albat

from albat.pipeline.config import DEFAULTS, cli_flags, load_config
from albat.pipeline.methods.base import REGISTRY, get_method, method_class
from albat.pipeline.options import BOOL, BYTES, FLOAT, INT, LIST, SECTIONS, STR, Option, OptionError, section_defaults
from albat.pipeline.surrogates.options import SURROGATE_OPTIONS
from albat.stores.errors import AlbatError

ALL_OPTIONS = [o for options in SECTIONS.values() for o in options] + [
    o for name in REGISTRY for o in method_class(name).OPTIONS]


# ----- the declarations ------------------------------------------------------------------------------
@pytest.mark.parametrize("option", ALL_OPTIONS, ids=lambda o: o.name)
def test_every_option_is_declared_soundly(option: Option) -> None:
    assert option.kind in (INT, FLOAT, STR, BOOL, LIST, BYTES)
    assert option.help.strip() and option.name.isidentifier()
    assert option.check(option.default) == option.default  # the default passes its own checks
    if option.choices:
        assert option.kind == STR and option.default in option.choices


def test_config_defaults_come_from_the_schema() -> None:
    assert DEFAULTS == section_defaults()
    assert set(DEFAULTS) == {"work", "seed", "task", "executor", "ray_address", "ray_cpus", "embed", "index", "query",
                             "filter", "mix", "emit"}


def test_the_encoder_options_are_declared_as_agreed() -> None:
    embed = {o.name: o for o in SECTIONS["embed"]}
    assert (embed["dtype"].choices, embed["dtype"].default) == (("auto", "float32", "bfloat16", "float16", "int8"), "auto")
    assert (embed["backend"].choices, embed["backend"].default) == (("auto", "torch", "onnx"), "auto")
    probe = embed["probe_rows"]
    assert (probe.kind, probe.min, probe.default) == (INT, 1, 128)
    assert probe.help == "corpus texts timed per runtime when both --backend and --dtype are auto"


def test_flags_are_unique_and_every_flag_has_an_option() -> None:
    from albat.pipeline.cli import build_parser

    flags = list(cli_flags().values())
    assert len(flags) == len(set(flags))
    parser = build_parser()
    run = next(a for a in parser._subparsers._group_actions[0].choices["run"]._actions if a.dest == "query__k")
    assert run.option_strings == ["--k"] and run.type is None  # values reach the schema as text


@pytest.mark.parametrize("kind, value, problem", [
    (INT, True, "a boolean, not an integer"), (INT, 2.5, "a number, not an integer"), (INT, "ten", "not an integer"),
    (INT, "2.5", "not an integer"), (FLOAT, "fast", "not a number"), (FLOAT, math.nan, "NaN"),
    (FLOAT, "nan", "NaN"), (FLOAT, math.inf, "not finite"), (FLOAT, False, "a boolean, not a number"),
    (BOOL, 1, "not true or false"), (STR, 3, "not a string"), (LIST, 3, "not a string or a list"),
    (LIST, ["a", 1], "not a string or a list"), (BYTES, "lots", "not understood as a size"),
])
def test_type_errors(kind: str, value: object, problem: str) -> None:
    default = {INT: 1, FLOAT: 1.0, BOOL: False, STR: "x", LIST: [], BYTES: "1GB"}[kind]
    with pytest.raises(OptionError, match=problem):
        Option("x", kind, default, "help").check(value)


@pytest.mark.parametrize("bounds, good, bad", [
    (dict(min=1), [1, 10**12], [0, -1]),
    (dict(min=0, max=1), [0.0, 0.5, 1.0], [-0.01, 1.01]),
    (dict(above=0), [1e-9], [0.0, -1.0]),
    (dict(min=0, below=1), [0.0, 0.99], [1.0, 1.5]),
])
def test_ranges(bounds: dict, good: list, bad: list) -> None:
    option = Option("x", FLOAT, good[0], "help", **bounds)
    for value in good:
        assert option.check(value) == value
    for value in bad:
        with pytest.raises(OptionError, match="too (small|large)"):
            option.check(value)


def test_values_from_the_command_line_are_parsed() -> None:
    assert Option("x", INT, 1, "h").check(" 42 ") == 42
    assert Option("x", FLOAT, 1.0, "h").check("1e-3") == 0.001
    assert Option("x", FLOAT, 1.0, "h", inf=True).check("inf") == math.inf
    assert Option("x", FLOAT, 1.0, "h").check(3) == 3.0 and isinstance(Option("x", FLOAT, 1.0, "h").check(3), float)
    assert Option("x", BOOL, False, "h").check("True") is True
    assert Option("x", LIST, [], "h").check("one") == ["one"]


# ----- every method refuses a misspelt key ------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_refuses_a_misspelt_option_naming_the_known_ones(name: str) -> None:
    known = [o.name for o in method_class(name).OPTIONS]
    with pytest.raises(AlbatError) as info:
        get_method(name, budegt=10)
    message = str(info.value)
    assert f"method {name}: unknown key 'budegt'" in message and "fix the spelling or remove it" in message
    assert all(key in message for key in known)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_refuses_a_misspelt_config_key(name: str, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[filter]\nmethod = "{name}"\nbudegt = 10\n')
    with pytest.raises(AlbatError) as info:
        load_config(config)
    message = str(info.value)
    assert f"{config}: unknown key 'filter.budegt' for method {name}" in message
    assert all(key in message for key in ["budget", "method", *(o.name for o in method_class(name).OPTIONS)])


def test_every_surrogate_option_reaches_albat_and_gradalign() -> None:
    for name in ("albat", "gradalign"):
        assert set(SURROGATE_OPTIONS) <= set(method_class(name).OPTIONS)


# ----- bad values through the real CLI: exit 2, one line, nothing changed --------------------------------
def _tree(work: Path) -> list[tuple]:
    return [(str(p.relative_to(work)), p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in [work, *sorted(work.rglob("*"))]]


CONFIG_CASES = [  # (config text, strings the error must name)
    ("[filter]\nbudegt = 10\n", ["unknown key 'filter.budegt' for method knn", "known: budget, method", "fix the spelling"]),
    ('[filter]\nbudget = "ten"\n', ['filter.budget = "ten"', "not an integer", "give an integer >= 0"]),
    ("[filter]\nbudget = 2.5\n", ["filter.budget = 2.5", "not an integer", "give an integer >= 0"]),
    ("[filter]\nbudget = true\n", ["filter.budget = true", "a boolean, not an integer", "give an integer >= 0"]),
    ('[filter]\nmethod = "albat"\nsteps = -5\n', ["filter.steps = -5", "too small", "give an integer >= 0"]),
    ('[filter]\nmethod = "gradalign"\nholdout_fraction = 1.5\n', ["filter.holdout_fraction = 1.5", "too large",
                                                                  "within [0, 1)"]),
    ('[filter]\nmethod = "albat"\nepsilon = nan\n', ["filter.epsilon = nan", "NaN", "give a number >= 0"]),
    ('[filter]\nmethod = "albat"\nlr = "fast"\n', ['filter.lr = "fast"', "not a number", "give a finite number > 0"]),
    ('[filter]\nmethod = "dsir"\npool = "everything"\n', ['filter.pool = "everything"', "corpus, candidates"]),
    ("[index]\ntarget_recall = 1.5\n", ["index.target_recall = 1.5", "within [0, 1]"]),
    ('[index]\nrecall_k = "many"\n', ['index.recall_k = "many"', "give an integer >= 1"]),
    ("[embed]\nprobe_rows = 0\n", ["embed.probe_rows = 0", "give an integer >= 1"]),
    ('[embed]\ndtype = "float8"\n', ['embed.dtype = "float8"', "one of auto, float32, bfloat16, float16, int8"]),
    ("[emit]\nbackbone_weight = inf\n", ["emit.backbone_weight = inf", "not finite"]),
    ("seed = -1\n", ["seed = -1", "give an integer >= 0"]),
]


@pytest.mark.parametrize("text, names", CONFIG_CASES, ids=[c[0].strip().replace("\n", " ") for c in CONFIG_CASES])
def test_bad_config_values_are_one_line_and_change_nothing(text: str, names: list[str], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    config, work = tmp_path / "bad.toml", tmp_path / "w"
    config.write_text(text)
    (work / "tasks/default/_stages").mkdir(parents=True)
    (work / "tasks/default/_stages" / "query.json").write_text('{"fingerprint": "x", "summary": {}}')
    before = _tree(work)
    capsys.readouterr()
    assert albat("run", "--config", config, "--work", work, "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"albat: error: {config}: "), err
    for name in names:
        assert name in err, (name, err)
    assert _tree(work) == before


FLAG_CASES = [  # (argv after the command, strings the error must name)
    (["filter", "--method-option", "foo=1"], ["--method-option: unknown key 'filter.foo' for method knn",
                                              "known: budget, method"]),
    (["filter", "--method", "albat", "--method-option", "steps=-1"], ["--method-option: filter.steps = -1", "too small"]),
    (["filter", "--method", "albat", "--method-option", "epsilon=nan"], ["filter.epsilon = nan", "NaN"]),
    (["filter", "--method", "classifier", "--method-option", "C=strong"], ["filter.C = strong", "not a number"]),
    (["filter", "--method", "knn", "--surrogate", "lm"], ["--surrogate: unknown key 'filter.surrogate' for method knn"]),
    (["filter", "--method", "albat", "--surrogate", "lm"], ["surrogate lm needs model=DIR", "--surrogate-model"]),
    (["filter", "--budget", "2.5"], ["--budget: filter.budget = 2.5", "not an integer"]),
    (["query", "--k", "0"], ["--k: query.k = 0", "too small", "give an integer >= 1"]),
    (["query", "--dedup-threshold", "high"], ["--dedup-threshold: query.dedup_threshold = high", "not a number"]),
    (["emit", "--backbone-weight", "nan"], ["--backbone-weight: emit.backbone_weight = nan", "NaN"]),
    (["emit", "--emit-shard-rows", "0"], ["--emit-shard-rows: emit.shard_rows = 0", "give an integer >= 1"]),
    (["index", "--target-recall", "inf"], ["--target-recall: index.target_recall = inf", "not finite"]),
    (["embed", "--batch-size", "-8"], ["--batch-size: embed.batch_size = -8", "too small"]),
    (["embed", "--dtype", "fp8"], ["--dtype: embed.dtype = fp8", "one of auto, float32"]),
    (["run", "--seed", "x"], ["--seed: seed = x", "not an integer"]),
]


@pytest.mark.parametrize("argv, names", FLAG_CASES, ids=[" ".join(c[0]) for c in FLAG_CASES])
def test_bad_flag_values_are_one_line_and_change_nothing(argv: list[str], names: list[str], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "w"
    work.mkdir()
    (work / "keep.txt").write_text("untouched")
    before = _tree(work)
    capsys.readouterr()
    assert albat(*argv, "--work", work, "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("albat: error: "), err
    for name in names:
        assert name in err, (name, err)
    assert _tree(work) == before


# ----- what is valid keeps working -----------------------------------------------------------------------
def test_valid_values_are_accepted_and_converted(tmp_path: Path) -> None:
    config = tmp_path / "ok.toml"
    config.write_text('[filter]\nmethod = "albat"\ntau = inf\nepsilon = inf\nlora_alpha = 16\nsteps = 10\n'
                      '[embed]\nskip_empty = true\nkeep_columns = "title"\n[index]\nmemory_budget = 1000\n')
    filters = load_config(config)["filter"]
    assert filters == {"method": "albat", "budget": 64, "threads": None, "tau": math.inf, "epsilon": math.inf, "lora_alpha": 16.0,
                       "steps": 10}
    overrides = {"filter": {"method": "albat", "tau": "-inf", "curvature": "adaptation", "budget": "7"},
                 "query": {"k": "4", "dedup_threshold": "0.99999"}, "seed": "3"}
    config = load_config(None, overrides)
    assert config["filter"]["tau"] == -math.inf and config["filter"]["budget"] == 7
    assert config["query"]["k"] == 4 and config["seed"] == 3


def test_method_options_reach_the_method_through_its_constructor_only() -> None:
    from albat.pipeline.methods.base import SelectionRequest

    assert "options" not in SelectionRequest.__dataclass_fields__
    method = get_method("dsir", buckets="50")
    assert method.options == {"pool": "corpus", "buckets": 50, "alpha": 1.0}


# ----- the README's tables are the schema's ---------------------------------------------------------------
def test_the_readme_option_tables_match_the_schema() -> None:
    from albat.pipeline.option_tables import README, with_tables

    text = README.read_text()
    assert with_tables(text) == text, "README.md's option tables are stale: run `python -m albat.pipeline.option_tables`"
    for option in ALL_OPTIONS:
        assert f"| `{option.name}` |" in text, option.name
