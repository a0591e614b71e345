"""`albat report`: the HTML page of a run, its pure pieces, and the page rendered in headless Chromium."""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from albat.pipeline.report import budget_cut, nearest_selected, pca_2d, thresholds
from conftest import albat, finished_small_run

SECTIONS = ("counts", "projection", "scores", "reasons", "nearest", "composition", "manifest")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def run(small_wiki, tiny_encoder, tmp_path_factory) -> tuple[Path, Path]:
    """A finished knn run and its report (WORK/report.html)."""
    work, config = finished_small_run(tmp_path_factory.mktemp("report"), small_wiki, tiny_encoder)
    assert albat("report", work) == 0
    return work, config


def test_pca_2d_finds_the_main_axis():
    rng = np.random.default_rng(0)
    t = rng.normal(size=200)
    x = np.stack([t, 2 * t, 0.01 * rng.normal(size=200), 0.01 * rng.normal(size=200)], 1)
    points, explained = pca_2d(x)
    assert points.shape == (200, 2) and explained[0] > 0.999
    assert abs(np.corrcoef(points[:, 0], t)[0, 1]) > 0.999
    assert pca_2d(np.ones((1, 4)))[0].shape == (1, 2)  # too few rows: zeros, no error


def test_thresholds_and_cut():
    score, keep = np.array([0.9, 0.5, 0.7, np.inf, 0.1]), np.array([True, False, True, True, False])
    assert budget_cut(score, keep) == 0.7  # the lowest finite kept score
    assert budget_cut(score, np.zeros(5, bool)) is None
    summary = {"tau": 0.0, "gradient_bound": 0.25}
    assert thresholds("score", score, keep, summary, {})[0][0] == 0.7
    assert thresholds("delta_loss", score, keep, summary, {}) == [(0.0, "τ = 0")]
    assert thresholds("delta_loss", score, keep, {"tau": "inf"}, {}) == []  # the test off: no line
    assert thresholds("set_grad_norm", score, keep, summary, {})[0][0] == 0.25
    assert thresholds("similarity", score, keep, {}, {"dedup_threshold": 0.95})[0][0] == 0.95


def test_nearest_selected_orders_by_cosine():
    selected = np.eye(3)
    adaptation = np.array([[0.1, 0.9, 0.0], [0.0, 0.6, 0.8]])
    order, sims = nearest_selected(adaptation, selected, 2)
    assert order.tolist() == [[1, 0], [2, 1]]
    assert np.allclose(sims, [[0.9, 0.1], [0.8, 0.6]])
    assert nearest_selected(adaptation, np.zeros((0, 3)), 2)[0].shape == (2, 0)


def _html(work: Path) -> str:
    return (work / "report.html").read_text()


def test_report_holds_every_section_and_real_pngs(run):
    work, _ = run
    page = _html(work)
    for section in SECTIONS:
        assert f'<section id="{section}">' in page, section
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 4  # projection, score histograms, composition
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'data-plot="projection"' in page and 'data-column="score"' in page
    assert "lowest kept score" in page and "near-duplicate threshold" in page
    assert 'data-column="topic"' in page  # a kept column of few values is a composition
    assert not list(work.glob(".report.html*"))  # written atomically: no temporary left


def test_reasons_grouped_by_kind(run):
    work, _ = run
    page = _html(work)
    table = page.split('<section id="reasons">')[1].split("</section>")[0]
    kinds = re.findall(r"<tr><td>(kept|rejected)</td><td>([^<]*)</td><td>(\d+)</td>", table)
    assert kinds and all(not re.search(r"\d", kind) for _, kind, _ in kinds)
    assert sum(int(n) for *_, n in kinds) == int(re.search(r"considered (\d+)", page).group(1))
    assert len(kinds) <= 6  # knn's handful of causes, not one group per row


def test_report_of_albat_draws_its_thresholds(run, tmp_path):
    work, config = run
    assert albat("filter", "--config", config, "--method", "albat", "--method-option", "steps=20", "--quiet") == 0
    out = tmp_path / "albat.html"
    assert albat("report", work, "--out", out) == 0
    page = out.read_text()
    for column in ("delta_loss", "curvature", "set_grad_norm", "loss_initial", "loss_adapted", "grad_norm"):
        drawn = f'data-column="{column}"' in page
        assert drawn or f"<code>{column}</code> (" in page, column  # a histogram, or "one value for every row"
    assert 'data-column="set_grad_norm"' in page and "ε·‖ḡ_A‖ =" in page
    assert albat("filter", "--config", config, "--quiet") == 0  # back to knn for the other tests


def test_report_refusals_are_one_line(run, tmp_path, capsys):
    work, _ = run
    assert albat("report", tmp_path / "nothing") == 2
    assert albat("report", work, "--out", tmp_path / "report.txt") == 2
    assert albat("report", work, "--task", "other") == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("albat: error: ") for e in errors)
    assert not (tmp_path / "report.txt").exists()


def test_report_failing_midway_leaves_nothing(run, tmp_path, monkeypatch):
    import albat.pipeline.report as report

    work, _ = run

    def broken(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report, "composition_png", broken)
    with pytest.raises(RuntimeError):
        report.write_report(work, out=tmp_path / "r.html")
    assert list(tmp_path.iterdir()) == []


def _chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def test_report_renders_in_headless_chromium(run, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install -y chromium; .ci/run installs it)")
    work, _ = run
    url = (work / "report.html").resolve().as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for section in SECTIONS:
        assert f'id="{section}"' in dom.stdout, section
    assert dom.stdout.count('class="plot"') >= 4 and "albat report: knn" in dom.stdout
    shot = tmp_path / "report.png"
    done = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1100,3000", url], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("L"))
    assert image.shape == (3000, 1100)
    assert image.std() > 10  # text and plots drawn, not a blank page
