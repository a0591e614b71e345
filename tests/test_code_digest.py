"""The selection code's digest (pipeline/code_digest.py): it follows the .py sources and only them, and a
completed filter stage made by other selection code is not reused."""
from __future__ import annotations

from pathlib import Path

import pytest

from albat.pipeline.code_digest import SELECTION_CODE, code_digest


def test_the_digest_follows_python_sources_only(tmp_path: Path) -> None:
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "a.py").write_text("x = 1\n")
    (tmp_path / "filter.py").write_text("y = 2\n")
    parts = ("filter.py", "methods")
    first = code_digest(parts, tmp_path)
    assert len(first) == 16 and code_digest(parts, tmp_path) == first
    (tmp_path / "methods" / "notes.txt").write_text("not code")
    assert code_digest.__wrapped__(parts, tmp_path) == first  # a non-.py file does not count
    (tmp_path / "methods" / "a.py").write_text("x = 2\n")
    edited = code_digest.__wrapped__(parts, tmp_path)
    assert edited != first
    (tmp_path / "methods" / "b.py").write_text("")
    assert code_digest.__wrapped__(parts, tmp_path) not in (first, edited)  # a new module counts too


def test_the_product_digest_covers_the_selection_code() -> None:
    assert SELECTION_CODE == ("filter.py", "methods", "surrogates")
    assert code_digest() == code_digest.__wrapped__()


def test_a_filter_record_made_by_other_selection_code_selects_again(small_wiki, tiny_encoder, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import albat, small_run_config

    from albat.pipeline import filter as filter_stage

    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    assert albat("run", "--config", config, "--quiet") == 0
    capsys.readouterr()
    assert albat("run", "--config", config, "--quiet") == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if ": done" in line]  # all skipped
    monkeypatch.setattr(filter_stage, "code_digest", lambda: "0123456789abcdef")  # as after an upgrade
    assert albat("run", "--config", config, "--quiet") == 0
    done = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if ": done" in line]
    assert done == ["filter", "emit"], done
