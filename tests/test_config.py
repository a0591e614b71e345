"""albat.pipeline.config: defaults, TOML values, CLI overrides, unknown keys, paths, byte sizes."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from albat.pipeline.config import DEFAULTS, load_config, parse_bytes
from albat.stores.errors import AlbatError


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    before = copy.deepcopy(DEFAULTS)
    config = load_config(None)
    assert config["work"] == "work"
    assert config["seed"] == 0
    assert config["embed"]["input"] == []
    assert config["embed"]["text_column"] == "text"
    assert config["embed"]["id_column"] is None
    assert config["query"]["k"] == 32
    assert config["filter"] == {"method": "knn", "budget": 64, "threads": None}
    assert config["index"]["memory_budget"] == "4GB"
    assert config["index"]["memory_budget_bytes"] == 4 * 10**9
    # every default section and key is present, with the default value
    for section, values in DEFAULTS.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert config[section][key] == value, (section, key)
    assert DEFAULTS == before  # loading never mutates the defaults


def test_config_is_a_copy_not_the_defaults():
    config = load_config(None)
    config["embed"]["input"].append("x")
    config["embed"]["keep_columns"].append("y")
    assert load_config(None)["embed"]["input"] == []
    assert DEFAULTS["embed"]["keep_columns"] == []


def test_toml_values_are_read(tmp_path):
    path = _write(tmp_path / "albat.toml", """
seed = 7
[embed]
text_column = "body"
id_column = "doc_id"
keep_columns = ["title", "lang"]
batch_size = 16
skip_empty = true
[index]
memory_budget = "512MiB"
target_recall = 0.9
[query]
k = 8
[filter]
method = "dsir"
budget = 10
alpha = 1   # a method option: allowed beside the method name, converted to its type
""")
    config = load_config(path)
    assert config["seed"] == 7
    assert config["embed"]["text_column"] == "body"
    assert config["embed"]["id_column"] == "doc_id"
    assert config["embed"]["keep_columns"] == ["title", "lang"]
    assert config["embed"]["batch_size"] == 16
    assert config["embed"]["skip_empty"] is True
    assert config["embed"]["shard_rows"] == 8192  # untouched keys keep their defaults
    assert config["index"]["memory_budget_bytes"] == 512 * 1024 * 1024
    assert config["index"]["target_recall"] == 0.9
    assert config["query"]["k"] == 8
    assert config["filter"] == {"method": "dsir", "budget": 10, "threads": None, "alpha": 1.0}
    assert isinstance(config["filter"]["alpha"], float)


def test_cli_overrides_win_over_the_file(tmp_path):
    path = _write(tmp_path / "albat.toml", """
seed = 7
[embed]
input = "from_file.parquet"
batch_size = 16
[index]
memory_budget = "512MiB"
""")
    overrides = {"seed": 3, "embed": {"input": "from_cli.parquet", "batch_size": None},
                 "index": {"memory_budget": "1GB"}, "filter": {"budget": 5}}
    config = load_config(path, overrides)
    assert config["seed"] == 3
    assert config["embed"]["input"] == ["from_cli.parquet"]  # a string becomes a list
    assert config["embed"]["batch_size"] == 16  # None means "flag not given": the file's value stays
    assert config["index"]["memory_budget_bytes"] == 10**9
    assert config["filter"]["budget"] == 5
    assert config["filter"]["method"] == "knn"


def test_overrides_without_a_file():
    config = load_config(None, {"query": {"adaptation": "adapt.jsonl", "k": 4}})
    assert config["query"]["adaptation"] == ["adapt.jsonl"]
    assert config["query"]["k"] == 4
    assert config["query"]["dedup_k"] == 16


@pytest.mark.parametrize("text, name", [
    ("sead = 1\n", "sead"),
    ("[embed]\ntxt_column = 'body'\n", "embed.txt_column"),
    ("[embedd]\ninput = 'x'\n", "embedd"),
    ("[index]\nmemory = '1GB'\n", "index.memory"),
])
def test_unknown_key_names_the_key_and_the_file(tmp_path, text, name):
    path = _write(tmp_path / "typo.toml", text)
    with pytest.raises(AlbatError) as info:
        load_config(path)
    msg = str(info.value)
    assert f"'{name}'" in msg
    assert str(path) in msg
    assert "unknown key" in msg


def test_section_given_as_a_value_is_an_error(tmp_path):
    path = _write(tmp_path / "flat.toml", "embed = 3\n")
    with pytest.raises(AlbatError, match=r"'embed' must be a \[embed\] table"):
        load_config(path)


def test_invalid_toml(tmp_path):
    path = _write(tmp_path / "bad.toml", "seed = \n[embed\n")
    with pytest.raises(AlbatError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "invalid TOML" in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(AlbatError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_relative_paths_resolve_against_the_config_directory(tmp_path, monkeypatch):
    conf_dir = tmp_path / "configs" / "exp"
    conf_dir.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    absolute = str(tmp_path / "abs" / "corpus.parquet")
    _write(conf_dir / "albat.toml", f"""
work = "runs/w1"
[embed]
input = ["data/a.parquet", "../shared/b.jsonl", "{absolute}"]
[query]
adaptation = "adapt.jsonl"
exclude = ["../../eval.jsonl"]
""")
    config = load_config(Path("..") / "configs" / "exp" / "albat.toml")  # a relative config path too
    assert config["work"] == str(conf_dir / "runs" / "w1")
    assert config["embed"]["input"] == [str(conf_dir / "data" / "a.parquet"),
                                        str(tmp_path / "configs" / "shared" / "b.jsonl"), absolute]
    assert config["query"]["adaptation"] == [str(conf_dir / "adapt.jsonl")]
    assert config["query"]["exclude"] == [str(tmp_path / "eval.jsonl")]
    assert all(os.path.isabs(p) for p in config["embed"]["input"])


def test_string_inputs_become_lists(tmp_path):
    path = _write(tmp_path / "c.toml", '[embed]\ninput = "one.parquet"\nkeep_columns = "title"\n'
                                        '[query]\nexclude = "ex.jsonl"\n')
    config = load_config(path)
    assert config["embed"]["input"] == [str(tmp_path / "one.parquet")]
    assert config["embed"]["keep_columns"] == ["title"]  # listified, not a path: left as given
    assert config["query"]["exclude"] == [str(tmp_path / "ex.jsonl")]


# ----- parse_bytes ---------------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [
    ("4GB", 4_000_000_000),
    ("512MiB", 512 * 1024 * 1024),
    ("512mib", 512 * 1024 * 1024),
    (" 2 GiB ", 2 * 1024**3),
    ("1.5GB", 1_500_000_000),
    ("10KB", 10_000),
    ("3KiB", 3 * 1024),
    ("1TB", 10**12),
    ("100B", 100),
    ("12345", 12_345),
    (1000, 1000),
    (2.5e9, 2_500_000_000),
])
def test_parse_bytes(value, expected):
    assert parse_bytes(value) == expected


@pytest.mark.parametrize("value", ["lots", "4XB", "GB", "", "4 G B X", "4BG", "1.2.3GB"])
def test_parse_bytes_bad_values(value):
    with pytest.raises(AlbatError) as info:
        parse_bytes(value)
    assert "not understood" in str(info.value) and "4GB" in str(info.value)


def test_bad_memory_budget_in_the_file_is_an_albat_error(tmp_path):
    path = _write(tmp_path / "c.toml", '[index]\nmemory_budget = "plenty"\n')
    with pytest.raises(AlbatError, match='memory_budget = "plenty"'):
        load_config(path)


def test_parse_bytes_infinite_is_an_albat_error():
    with pytest.raises(AlbatError):
        parse_bytes("inf")


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_non_finite_memory_budget_in_toml_is_an_albat_error(tmp_path, value):
    path = _write(tmp_path / "c.toml", f"[index]\nmemory_budget = {value}\n")
    with pytest.raises(AlbatError):
        load_config(path)


def test_the_default_work_directory_lies_beside_the_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp").mkdir()
    path = _write(tmp_path / "exp" / "c.toml", "seed = 1\n")
    assert load_config(path)["work"] == str(tmp_path / "exp" / "work")
    assert load_config(None)["work"] == "work"


@pytest.mark.parametrize("objective", ["v2", "facility", "match"])
def test_coverage_with_an_objective_that_spreads_the_budget_itself_is_refused_when_the_config_loads(objective):
    with pytest.raises(AlbatError) as info:
        load_config(None, {"filter": {"method": "albat", "objective": objective, "coverage": "round_robin"}})
    message = str(info.value)
    assert "\n" not in message and f"not {objective}" in message and "drop coverage" in message
    assert load_config(None, {"filter": {"method": "albat", "objective": "reducible", "coverage": "round_robin"}})
