"""Progress bars on every long step (only on a terminal, off with --quiet), --log-level and --json."""
from __future__ import annotations

import contextlib
import io
import json
import sys
from typing import Iterator

import pytest

from albat.pipeline.progress import bars_on, progress_bar, shown, tracked_range, tracked_slices
from conftest import albat, small_run_config


class Terminal(io.StringIO):
    """A captured stderr that says it is a terminal, so bars draw into it."""

    def isatty(self) -> bool:
        return True


@contextlib.contextmanager
def on_terminal() -> Iterator[Terminal]:
    """stderr replaced inside the test itself (pytest's capture resets it between a fixture and the test)."""
    fake, old = Terminal(), sys.stderr
    sys.stderr = fake
    try:
        yield fake
    finally:
        sys.stderr = old


def test_bars_only_on_a_terminal_and_when_shown():
    with on_terminal():
        assert bars_on()
        with shown(False):
            assert not bars_on() and not bars_on(True)
            with shown(True):
                assert bars_on()  # the innermost wins
    plain, old = io.StringIO(), sys.stderr
    sys.stderr = plain
    try:
        assert not bars_on()
        with progress_bar(total=10, desc="silent") as bar:
            bar.update(10)
    finally:
        sys.stderr = old
    assert "silent" not in plain.getvalue()


class Recorder:
    """A stand-in bar that records its total, its updates and whether it was closed."""
    made: list["Recorder"] = []

    def __init__(self, total, desc, **_):
        self.total, self.desc, self.n, self.closed = total, desc, 0, False
        Recorder.made.append(self)

    def update(self, n):
        self.n += n

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_tracked_slices_and_range_count_every_row(monkeypatch):
    import albat.pipeline.progress as progress

    monkeypatch.setattr(progress, "progress_bar", Recorder)
    Recorder.made = []
    slices = [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert list(tracked_slices(iter(slices), 10, "rows pass")) == slices
    assert list(tracked_range(6, "steps pass")) == list(range(6))  # a loop of 5 steps that runs to step == 5
    for step in tracked_range(100, "stopped early"):  # a loop that breaks still closes its bar
        if step == 3:
            break
    rows, steps, early = Recorder.made
    assert (rows.total, rows.n, rows.closed) == (10, 10, True)
    assert (steps.total, steps.n, steps.closed) == (5, 5, True)
    assert (early.total, early.n, early.closed) == (99, 3, True)


def _run_json(*args: str, capsys) -> tuple[list[dict], str]:
    assert albat(*args) == 0
    captured = capsys.readouterr()
    return [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_json_prints_one_parseable_object_per_stage(small_wiki, tiny_encoder, tmp_path, capsys):
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    objects, err = _run_json("run", "--config", str(config), "--quiet", "--json", capsys=capsys)
    assert [o["stage"] for o in objects] == ["embed", "index", "query", "filter", "emit"]
    assert all(o["state"] == "done" for o in objects)
    by_stage = {o["stage"]: o for o in objects}
    assert by_stage["embed"]["summary"]["rows"] == small_wiki.rows
    assert by_stage["filter"]["summary"]["kept"] == 20 and by_stage["filter"]["summary"]["method"] == "knn"
    assert by_stage["emit"]["paths"]["manifest"].endswith("manifest.json")
    assert "albat: INFO: filter: done" in err  # the text lines go to the log
    again, _ = _run_json("filter", "--config", str(config), "--json", "--log-level", "warning", capsys=capsys)
    assert len(again) == 1 and again[0]["state"] == "skipped"
    assert again[0]["summary"] == by_stage["filter"]["summary"]


def test_log_levels(small_wiki, tiny_encoder, tmp_path, capsys):
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    assert albat("run", "--config", str(config), "--quiet", "--log-level", "debug") == 0
    captured = capsys.readouterr()
    assert "albat: DEBUG: query: planned, fingerprint" in captured.err
    assert "filter: done" in captured.out  # without --json the summaries stay on stdout
    assert albat("run", "--config", str(config), "--quiet", "--json", "--log-level", "error") == 0
    captured = capsys.readouterr()
    assert captured.err == "" and len(captured.out.splitlines()) == 5
    assert albat("index", "--config", str(config), "--log-level", "loud") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("albat: error: --log-level") and "debug, info, warning, error" in err and "\n" not in err


def test_every_stage_shows_a_bar_on_a_terminal(small_wiki, tiny_encoder, tmp_path, capsys):
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    with on_terminal() as terminal:
        assert albat("run", "--config", str(config)) == 0
    out = terminal.getvalue()
    for desc in ("embed: reading the corpus", "embed", "index", "query: encode", "query: exact duplicates", "emit"):
        assert f"{desc}:" in out, desc
    assert "rows/s" in out or "s/rows" in out  # the rate
    with on_terminal() as terminal:
        assert albat("run", "--config", str(config), "--quiet", "--force") == 0
    assert "embed: reading the corpus" not in terminal.getvalue()  # --quiet: no bars


def test_surrogate_passes_show_bars(small_wiki, tiny_encoder, tmp_path):
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    assert albat("run", "--config", str(config), "--quiet") == 0
    with on_terminal() as terminal:
        assert albat("filter", "--config", str(config), "--method", "albat", "--method-option", "steps=20") == 0
        assert albat("filter", "--config", str(config), "--method", "dsir", "--method-option", "pool=corpus") == 0
    out = terminal.getvalue()
    for desc in ("contrastive surrogate: fit", "contrastive surrogate: losses", "contrastive surrogate: gradients",
                 "contrastive surrogate: curvature", "dsir: n-grams", "dsir: draw"):
        assert desc in out, desc
