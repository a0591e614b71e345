"""Property-based checks (hypothesis) of issue 13's promise, on copies of one finished work directory:
whatever option value or file damage a user throws at a stage, albat answers with exit 0 and a
correct result, or exit 1/2 and one line; never a traceback, and a refusal changes nothing.

Bounded for CI: a fixed number of examples, derandomized (the same examples every run), no deadline
per example but a small corpus (each example runs one stage in-process, about a second)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import SmallWiki, albat, finished_small_run

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_inputs import tree

from albat.pipeline.config import cli_options

STAGES = ("embed", "index", "query", "filter", "emit")
EXAMPLES = 80
# Options some of whose valid values send a stage somewhere slow or elsewhere by design (a model name to
# download, a GPU, a Ray cluster, an onnx export, a probe of every runtime, a huge recall sample): they
# draw from their own values below, the bad ones and the cheap good ones, instead of from VALUES.
OWN_VALUES: dict[str, list[str]] = {
    "input": ["", "missing.parquet", "{config}", "{work}", "{work}/store", "{corpus}", "{corpus}*", "/dev/null"],
    "adaptation": ["", "missing.jsonl", "{config}", "{work}", "{corpus}", "/dev/null"],
    "exclude": ["", "missing.jsonl", "{config}", "{work}", "{corpus}", "/dev/null"],
    "encoder": ["", "no-such-model", "{config}", "{work}", "/dev/null", "{encoder}"],
    "device": ["", "cpu", "cuda", "cuda:7", "gpu", "mps", "cpu:0", "auto", "-1"],
    "threads": ["-1", "0", "1", "2", "1.5", "nan", "all", ""],
    "dtype": ["", "float32", "bfloat16", "float64", "int4", "FLOAT32"],
    "backend": ["", "torch", "tensorrt", "Torch"],
    "executor": ["", "local", "dask", "Ray", "ray://nowhere"],
    "memory_budget": ["", "0", "-1", "1", "1KB", "64MB", "4GiB", "ten", "1e309", "nan", "1.5GB", "5XB"],
    "recall_queries": ["0", "-1", "1", "7", "1e309", "nan", "ten"],
    "output": ["", ".", "..", "/", "store", "index", "query", "_stages", "out/../../x", "{work}/out", "sub/dir", "x\x00y"],
}
FLAG_OF = {(stage, option.name): option.cli_flag for stage, options in cli_options().items() for option in options}

SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def finished(small_wiki: SmallWiki, tiny_encoder: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return finished_small_run(tmp_path_factory.mktemp("properties"), small_wiki, tiny_encoder)


def _flags() -> list[tuple[str, str]]:
    return [(stage, option.cli_flag) for stage in STAGES for option in cli_options()[stage]
            if option.cli_flag and option.const is None and option.name not in OWN_VALUES]


def _own_values() -> list[tuple[str, str]]:
    """(flag, value) for every option of OWN_VALUES under every stage that has it."""
    return [(flag, value) for (stage, name), flag in FLAG_OF.items() if stage in STAGES
            for value in OWN_VALUES.get(name, [])]


VALUES = st.one_of(
    st.integers(min_value=-3, max_value=70).map(str),
    st.sampled_from(["0", "-1", "1e309", "nan", "inf", "-inf", "0.5", "1.0000001", "2.5", "true", "", "ten",
                     "9223372036854775808", "-0", "1_000", "0x10", " 4 ", "Flat", "IVF4,Flat", "IVF0,Flat"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
)


def _run(argv: list[object], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = albat(*argv)  # a traceback would propagate and fail the example
    out = capsys.readouterr()
    return rc, out.out, out.err


def _fresh_copy(finished: tuple[Path, Path], tmp_path: Path) -> Path:
    work = tmp_path / "w"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(finished[0], work)
    return work


def _assert_sound_or_refused(work: Path, before: list, rc: int, err: str, capsys: pytest.CaptureFixture) -> None:
    """Through `run`: accepted means sound; refused means one line, and nothing changed, or the stages
    before the refusing one completed and verify names what they made stale (and nothing else)."""
    if rc == 0:
        assert albat("verify", work, "--quiet") == 0  # a result albat accepted is a sound one
        return
    assert rc == 2, (rc, err)
    _assert_one_line(err)
    if tree(work) != before:
        rc, out, _ = _run(["verify", work], capsys)
        drift = [line for line in out.splitlines() if line.startswith("DRIFT")]
        assert rc == 1 and drift and all(": stale: " in line for line in drift), out


def _assert_one_line(err: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("albat: error: "), err


@SETTINGS
@given(flag=st.sampled_from(_flags()), value=VALUES)
def test_random_option_values(finished, tmp_path, capsys, flag, value) -> None:
    stage, cli_flag = flag  # through `run`, so the stages after the changed one follow it
    work = _fresh_copy(finished, tmp_path)
    before = tree(work)
    rc, _, err = _run(["run", "--config", finished[1], "--work", work, f"{cli_flag}={value}", "--quiet"], capsys)
    _assert_sound_or_refused(work, before, rc, err, capsys)


@SETTINGS
@given(flag_value=st.sampled_from(_own_values()))
def test_own_values_of_costly_options(finished, small_wiki, tiny_encoder, tmp_path, capsys, flag_value) -> None:
    cli_flag, value = flag_value
    work = _fresh_copy(finished, tmp_path)
    value = value.format(config=finished[1], work=work, corpus=small_wiki.corpus, encoder=tiny_encoder)
    before = tree(work)
    rc, _, err = _run(["run", "--config", finished[1], "--work", work, f"{cli_flag}={value}", "--quiet"], capsys)
    _assert_sound_or_refused(work, before, rc, err, capsys)


def _method_keys() -> list[tuple[str, str]]:
    """(method, option) for every declared option of the cheap methods, and a key none declares."""
    from albat.pipeline.methods.base import method_class

    return [(method, key) for method in METHODS
            for key in [o.name for o in method_class(method).OPTIONS] + ["budegt"]]


METHODS = ("random", "knn", "dsir", "classifier", "albat")


@settings(SETTINGS, max_examples=40)
@given(method_key=st.sampled_from(_method_keys()), value=VALUES)
def test_random_method_option_values(finished, tmp_path, capsys, method_key, value) -> None:
    method, key = method_key
    work = _fresh_copy(finished, tmp_path)
    before = tree(work)
    rc, _, err = _run(["run", "--config", finished[1], "--work", work, "--method", method,
                       "--method-option", f"{key}={value}", "--quiet"], capsys)
    _assert_sound_or_refused(work, before, rc, err, capsys)


DAMAGE = st.sampled_from(["flip", "truncate", "empty", "delete", "garbage", "json-object"])


def _damage(path: Path, how: str, at: float) -> None:
    data = path.read_bytes()
    if how == "flip" and data:
        pos = min(int(at * len(data)), len(data) - 1)
        path.write_bytes(data[:pos] + bytes([data[pos] ^ 0x5A]) + data[pos + 1:])
    elif how == "truncate":
        path.write_bytes(data[: int(at * len(data))])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "delete":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(b"\x00\xffnot albat's\n" * 3)
    else:
        path.write_text('{"stage": "query", "fingerprint": "0", "summary": {}, "complete": true, "rows": 1}')


@SETTINGS
@given(which=st.floats(min_value=0, max_value=1, exclude_max=True), how=DAMAGE,
       at=st.floats(min_value=0, max_value=1, exclude_max=True), stage=st.sampled_from(("run", *STAGES)))
def test_random_file_damage(finished, tmp_path, capsys, which, how, at, stage) -> None:
    work = _fresh_copy(finished, tmp_path)
    files = sorted(p for p in work.rglob("*") if p.is_file())
    target = files[int(which * len(files))]
    _damage(target, how, at)
    rc, out, err = _run(["verify", work], capsys)
    assert rc in (0, 1), (rc, err)
    assert "Traceback" not in out + err
    before = tree(work)
    rc, _, err = _run([stage, "--config", finished[1], "--work", work, "--quiet"], capsys)
    if rc == 0:
        if stage == "run":  # every stage ran: whatever was damaged, its owner rebuilt it
            assert albat("verify", work, "--quiet") == 0, (target, how)
    else:
        assert rc == 2, (rc, err)
        _assert_one_line(err)
        assert tree(work) == before
