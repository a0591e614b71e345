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

from pipeline.config import cli_options

STAGES = ("index", "query", "filter", "emit")
# Options whose valid values send a stage somewhere slow or elsewhere by design (a model name, a device,
# thread counts, paths): their checks are covered case by case in test_bad_inputs / test_options.
SKIP = {"device", "threads", "encoder", "query_encoder", "adaptation", "exclude", "input", "backend", "dtype",
        "memory_budget", "recall_queries", "output", "budget_fraction"}
EXAMPLES = 80

SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def finished(small_wiki: SmallWiki, tiny_encoder: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return finished_small_run(tmp_path_factory.mktemp("properties"), small_wiki, tiny_encoder)


def _flags() -> list[tuple[str, str]]:
    return [(stage, option.cli_flag) for stage in STAGES for option in cli_options()[stage]
            if option.cli_flag and option.const is None and option.name not in SKIP]


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
    if rc == 0:
        assert albat("verify", work, "--quiet") == 0  # a result albat accepted is a sound one
    else:
        assert rc == 2, (rc, err)
        _assert_one_line(err)
        assert tree(work) == before  # a refusal changes nothing


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
