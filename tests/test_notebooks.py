"""notebooks/: every notebook executes (nbclient, a real kernel) on the small test fixtures, so they
never rot; the committed copies are executed on the demo data and stay small."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import REPO, small_run_config

NOTEBOOKS = REPO / "notebooks"
ORDER = ("01_pipeline_step_by_step.ipynb", "02_why_kept_or_rejected.ipynb", "03_train_with_albat_weight.ipynb")
MAX_BYTES = 150_000


def test_every_notebook_is_listed():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(ORDER)


@pytest.mark.parametrize("name", ORDER)
def test_committed_notebook_is_executed_and_small(name):
    path = NOTEBOOKS / name
    book = json.loads(path.read_text())
    code = [c for c in book["cells"] if c["cell_type"] == "code"]
    assert code and all(c["execution_count"] for c in code), "commit the notebook executed (on the demo data)"
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), "executed top to bottom in one run"
    assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert path.stat().st_size < MAX_BYTES
    text = path.read_text()
    assert str(REPO) not in text and "/tmp/" not in text and "site-packages" not in text  # no local paths


def _text(cell) -> str:
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif "data" in output:
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


@pytest.fixture(scope="module")
def executed(small_wiki, tiny_encoder, tmp_path_factory):
    """The three notebooks executed in order on the small fixtures: name -> the executed notebook."""
    import os

    import nbformat
    from nbclient import NotebookClient

    root = tmp_path_factory.mktemp("notebooks")
    config = small_run_config(root, small_wiki, tiny_encoder)
    env = {"ALBAT_CONFIG": str(config), "ALBAT_WORK": str(root / "work")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    books = {}
    try:
        for name in ORDER:
            book = nbformat.read(NOTEBOOKS / name, as_version=4)
            NotebookClient(book, timeout=600, kernel_name="python3",
                           resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
            books[name] = book
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return books, root


def test_step_by_step_runs_every_stage(executed):
    books, root = executed
    text = "\n".join(_text(c) for c in books[ORDER[0]].cells if c.cell_type == "code")
    assert "'adaptation': 8" in text and "'k': 8" in text
    assert "'method': 'knn', 'budget': 20" in text
    assert "report.html True" in text
    assert (root / "work" / "report.html").exists()


def test_reasons_are_grouped_by_kind_and_similarities_are_real(executed):
    books, _ = executed
    text = "\n".join(_text(c) for c in books[ORDER[1]].cells if c.cell_type == "code")
    groups = [(int(k), int(n)) for k, n in re.findall(r"(\d+) kinds of decision for (\d+) rows", text)]
    assert len(groups) == 2  # the stored knn selection and albat's preview
    assert all(1 <= kinds <= 8 and kinds < rows for kinds, rows in groups)  # causes, not one group per row
    low, high = map(float, re.search(r"mean_similarity from ([-\d.]+) to ([-\d.]+)", text).groups())
    assert high > 0 and low <= high  # real cosines, not 0.0 for every row
    assert "only_albat" in text


def test_weighted_loss_is_the_bat_loss(executed):
    books, _ = executed
    text = "\n".join(_text(c) for c in books[ORDER[2]].cells if c.cell_type == "code")
    assert "n_A = 8" in text and "(= λ·n_A)" in text
    assert re.search(r"total backbone weight = 8\.0\b", text)  # λ = 1, n_A = 8
    assert re.search(r"(\d\.\d+) \1 True", text)  # Σwℓ/n_A equals the BAT loss
    means = re.search(r"mean over batches ([\d.]+) = Σwℓ/Σw ([\d.]+)", text)
    assert means and means.group(1) == means.group(2)
