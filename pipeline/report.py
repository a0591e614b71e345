"""`albat report WORK`: one self-contained HTML page of a run, to look at a selection.

Sections (each an element with that id, which the Chromium test looks for): `counts` (rows at each
stage), `projection` (a 2-D PCA of the adaptation, candidate and selected embeddings), `scores`
(a histogram of every score the method wrote, kept against rejected, with its thresholds drawn),
`reasons` (decisions grouped by the kind of reason, numbers taken out: DuckDB's `reason_kind`),
`nearest` (for a seeded sample of adaptation examples, their most similar selected rows),
`composition` (rows per source, and per kept column of few values, in the corpus, the candidates
and the selection) and `manifest`. The PNGs are embedded (base64), so the page is one file; it is
written atomically (stores.atomic). Matplotlib (Agg) draws; nothing is read from outside the work
directory.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from albat.stores.atomic import atomic_path
from albat.stores.errors import AlbatError
from albat.stores.workdir import Workdir

STAGES = ("embed", "index", "query", "filter", "emit")
MAX_POINTS = 4000  # candidates drawn in the projection (a seeded sample beyond that)
NEAREST_SAMPLE, NEAREST_K = 6, 3
MAX_GROUPS = 25  # a kept column with more values than this is not a composition
NOT_SCORES = {"id", "query_idx", "selection_rank"}


# -- pure pieces -----------------------------------------------------------------------------------
def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) rows -> their (n, 2) coordinates on the first two principal axes, and the fraction of
    variance each axis explains. Fewer than two rows or dimensions: zeros."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2 or x.shape[1] < 2:
        return np.zeros((len(x), 2)), np.zeros(2)
    centred = x - x.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s ** 2
    explained = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    return centred @ vt[:2].T, np.pad(explained, (0, 2 - len(explained)))


def budget_cut(score: np.ndarray, keep: np.ndarray) -> float | None:
    """The lowest finite score among the kept rows (where a top-m method's cut lies), else None."""
    kept = np.asarray(score, dtype=np.float64)[np.asarray(keep, bool)]
    kept = kept[np.isfinite(kept)]
    return float(kept.min()) if len(kept) else None


def thresholds(column: str, score: np.ndarray, keep: np.ndarray, selection: dict[str, Any],
               query: dict[str, Any]) -> list[tuple[float, str]]:
    """The lines to draw on a column's histogram: the budget's cut on `score`, and the bounds the
    method or the query stage recorded (albat's τ on Δℓ and ε·‖ḡ_A‖ on the set drift, the
    near-duplicate threshold on similarity)."""
    lines: list[tuple[float, str]] = []
    if column == "score" and (cut := budget_cut(score, keep)) is not None:
        lines.append((cut, f"lowest kept score {cut:.4g}"))
    tau = selection.get("tau")
    if column == "delta_loss" and isinstance(tau, (int, float)) and math.isfinite(tau):
        lines.append((float(tau), f"τ = {tau:g}"))
    bound = selection.get("gradient_bound")
    if column == "set_grad_norm" and isinstance(bound, (int, float)) and math.isfinite(bound):
        lines.append((float(bound), f"ε·‖ḡ_A‖ = {bound:.4g}"))
    dedup = query.get("dedup_threshold")
    if column == "similarity" and isinstance(dedup, (int, float)):
        lines.append((float(dedup), f"near-duplicate threshold {dedup:g}"))
    return lines


def nearest_selected(adaptation: np.ndarray, selected: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each adaptation vector, the rows of `selected` with the highest cosine (vectors are unit
    norm): (n, min(k, m)) row indices, best first, and their similarities."""
    if len(selected) == 0 or len(adaptation) == 0:
        return np.zeros((len(adaptation), 0), np.int64), np.zeros((len(adaptation), 0))
    sims = np.asarray(adaptation, np.float64) @ np.asarray(selected, np.float64).T
    k = min(k, sims.shape[1])
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


def shorten(text: Any, width: int = 160) -> str:
    text = " ".join(str(text).split()) if text is not None else ""
    return text if len(text) <= width else text[: width - 1] + "…"


# -- drawing -----------------------------------------------------------------------------------------
def _figure(width: float = 6.4, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=80)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _img(png: str, alt: str, name: str) -> str:
    return f'<img class="plot" data-plot="{html.escape(name)}" alt="{html.escape(alt)}" src="data:image/png;base64,{png}">'


def projection_png(adaptation: np.ndarray, candidates: np.ndarray, selected_mask: np.ndarray) -> tuple[str, np.ndarray]:
    points, explained = pca_2d(np.concatenate([adaptation, candidates]) if len(candidates) else adaptation)
    a, c = points[: len(adaptation)], points[len(adaptation):]
    fig, ax = _figure(6.4, 4.8)
    if len(c):
        ax.scatter(*c[~selected_mask].T, s=6, c="#bbbbbb", label=f"candidates not selected ({int((~selected_mask).sum())})")
        ax.scatter(*c[selected_mask].T, s=14, c="#1f77b4", label=f"selected ({int(selected_mask.sum())})")
    ax.scatter(*a.T, s=60, marker="*", c="#d62728", label=f"adaptation ({len(a)})")
    ax.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.0%} of variance)")
    ax.legend(loc="best", fontsize=8)
    return _png(fig), explained


def histogram_png(column: str, values: np.ndarray, keep: np.ndarray, lines: list[tuple[float, str]]) -> str:
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    fig, ax = _figure()
    data = [values[finite & ~keep], values[finite & keep]]
    edges = np.histogram_bin_edges(values[finite], bins=30) if finite.any() else 10
    ax.hist(data, bins=edges, stacked=True, color=["#bbbbbb", "#1f77b4"],
            label=[f"rejected ({len(data[0])})", f"kept ({len(data[1])})"])
    for i, (x, label) in enumerate(lines):
        ax.axvline(x, color=["#d62728", "#2ca02c", "#9467bd"][i % 3], linestyle="--", label=label)
    ax.set_xlabel(column)
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    return _png(fig)


def composition_png(groups: list[str], fractions: dict[str, list[float]], title: str) -> str:
    fig, ax = _figure(6.4, max(2.4, 0.28 * len(groups) + 1.2))
    y = np.arange(len(groups))
    height = 0.8 / max(len(fractions), 1)
    for i, (name, values) in enumerate(fractions.items()):
        ax.barh(y + i * height, values, height=height, label=name)
    ax.set_yticks(y + height * (len(fractions) - 1) / 2, [shorten(g, 40) for g in groups], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("fraction of rows")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


# -- reading the run ---------------------------------------------------------------------------------
def _table(rows: list[dict[str, Any]], columns: list[str] | None = None, cls: str = "") -> str:
    if not rows:
        return "<p><em>none</em></p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return "" if value is None else str(value)


def _counts(work: Workdir) -> list[dict[str, Any]]:
    rows = []
    for stage in STAGES:
        record = work.stage_record(stage) if stage != "embed" else None
        if stage == "embed":
            from albat.stores.embedding_store import EmbeddingStore

            info = EmbeddingStore(work.store).read_info() or {}
            summary = {"rows": info.get("rows"), "shards": info.get("shards"), "complete": info.get("complete")}
        else:
            summary = (record or {}).get("summary") or {}
        keep = {"embed": ("rows", "shards"), "index": ("index_key", "rows", "recall_at_k", "nprobe"),
                "query": ("adaptation", "exclude", "k", "pairs", "candidates", "blocked", "blocked_candidates"),
                "filter": ("method", "budget", "considered", "kept"), "emit": ("rows", "shards", "selected")}[stage]
        shown = ", ".join(f"{k} {_cell(summary[k])}" for k in keep if summary.get(k) is not None)
        rows.append({"stage": stage, "state": "done" if summary else "not run", "counts": shown or "—"})
    return rows


def auto_rows(auto: dict[str, Any]) -> list[dict[str, Any]]:
    """`auto`'s choice table (the filter record's `auto`): one row per (λ, method) with its fold scores,
    mean and spread, the chosen one marked; a run without a λ grid has one λ, its `backbone_weight`."""
    tables = auto.get("tables") or [{"lambda": auto.get("backbone_weight"), "table": auto.get("table") or []}]
    chosen = (auto.get("choice"), auto.get("lambda", auto.get("backbone_weight")))
    rows = []
    for table in tables:
        for row in table["table"]:
            mark = "chosen" if (row["method"], table["lambda"]) == chosen or (
                chosen[0] == "none" and table["lambda"] == 0 and row is table["table"][0]) else ""
            rows.append({"λ": table["lambda"], "method": row["method"], "": mark,
                         "mean": row["mean"], "std": row["std"],
                         "fold scores": " ".join(f"{v:.4f}" for v in row["fold_scores"]),
                         "select s": row["select_seconds"], "error": row.get("error") or ""})
    return rows


def _auto(summary: dict[str, Any]) -> str:
    auto = summary["auto"]
    score = "minus the held-out log-perplexity" if auto.get("judge") == "lm" else f"held-out {auto.get('score')}"
    folds = auto.get("folds_run", auto.get("folds"))
    stop = (f", stopped after {folds} of {auto.get('folds')} folds: one candidate won every fold so far"
            if folds != auto.get("folds") else "")
    lam = f" at λ = {auto['lambda']:g}" if auto.get("lambda") is not None else ""
    return (f"<p><code>--method auto</code> chose <b>{html.escape(str(auto.get('choice')))}</b>{lam} by {folds}-fold "
            f"cross-validation with the {html.escape(str(auto.get('judge')))} judge, scored by {score}{stop}. "
            "At λ = 0 every method trains on the fold alone (adding nothing).</p>"
            + _table(auto_rows(auto), cls="auto"))


def _groups(con: Any, column: str, total_sql: str) -> list[dict[str, Any]]:
    from albat.stores.views import fetch_table

    return fetch_table(con, total_sql.format(column=column)).to_pylist()


def task_workdir(work_dir: str | Path, task: str = "default") -> Workdir:
    """The work directory, for `task` where the work directory keeps several (stores.workdir)."""
    if task == "default":
        return Workdir(work_dir)
    try:
        return Workdir(work_dir, task=task)  # type: ignore[call-arg]
    except TypeError:
        raise AlbatError(f"--task {task}: this albat keeps one task per work directory; drop --task") from None


def write_report(work_dir: str | Path, out: str | Path | None = None, seed: int = 0, task: str = "default") -> Path:
    """Render the report of the run in `work_dir` to `out` (default WORK/report.html); returns the path."""
    from albat.pipeline.filter import query_store
    from albat.stores.shard_store import read_manifest
    from albat.stores.tables import read_array
    from albat.stores.views import connect, fetch_table

    work = task_workdir(work_dir, task)
    if not work.root.is_dir():
        raise AlbatError(f"{work.root}: no such work directory; run the pipeline first")
    filter_record = work.stage_record("filter")
    if not filter_record or not (work.query / "adaptation.npy").exists():
        raise AlbatError(f"{work.root}: no completed query and filter stages; run `albat run` (or query and "
                         "filter) before `albat report`")
    target = Path(out) if out is not None else work.root / "report.html"
    if target.suffix.lower() not in (".html", ".htm"):
        raise AlbatError(f"{target}: the report is HTML; give --out a name ending in .html")
    query_record = work.stage_record("query") or {}
    query_config = query_record.get("config") or {}
    summary = filter_record.get("summary") or {}
    store = query_store(work)  # the side the adaptation vectors were compared with
    con = connect(work)
    try:
        selection = fetch_table(con, "SELECT * FROM selection")
        candidates = fetch_table(con, "SELECT candidate_id, similarity, blocked FROM candidates ORDER BY candidate_id")
        adaptation = fetch_table(con, "SELECT * FROM adaptation ORDER BY query_idx")
        reasons = fetch_table(con, "SELECT CASE WHEN keep THEN 'kept' ELSE 'rejected' END AS decision, "
                              "reason_kind(reason) AS reason_kind, count(*) AS rows, min(reason) AS example "
                              "FROM selection GROUP BY ALL ORDER BY decision, rows DESC, reason_kind").to_pylist()
        sections = [
            ("counts", "Counts at each stage", _table(_counts(work), cls="counts")),
            ("projection", "Embeddings in two dimensions", _projection(store, work, candidates, selection, seed)),
            ("scores", "Scores and thresholds", _scores(selection, candidates, summary, query_config)),
            *([("auto", "How auto chose", _auto(summary))] if summary.get("auto") else []),
            ("reasons", "Why rows were kept or rejected, by kind of reason",
             "<p>Numbers are taken out of each reason (DuckDB: <code>reason_kind(reason)</code>), so rows "
             "rejected for the same cause form one group.</p>" + _table(reasons, cls="reasons")),
            ("nearest", "Nearest selected rows for a sample of adaptation examples",
             _nearest(store, work, adaptation, selection, query_config, seed)),
            ("composition", "Composition by source", _composition(con, store)),
        ]
    finally:
        con.close()
    try:
        manifest = read_manifest(work.output)
    except AlbatError:
        manifest = None
    manifest_html = (f"<details open><summary>manifest.json</summary><pre>{html.escape(json.dumps(manifest, indent=2, default=str))}</pre></details>"
                     if manifest is not None else "<p><em>not emitted yet: run <code>albat emit</code></em></p>")
    sections.append(("manifest", "Manifest", manifest_html))
    page = _page(work, summary, sections)
    with atomic_path(target) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return target


def _projection(store: Any, work: Workdir, candidates: Any, selection: Any, seed: int) -> str:
    from albat.stores.tables import read_array

    adaptation = read_array(work.query / "adaptation.npy")
    ids = candidates.column("candidate_id").to_numpy()
    kept_ids = selection.filter(selection.column("keep")).column("id").to_numpy()
    extra = np.setdiff1d(kept_ids, ids)  # methods that select outside the pool (random, dsir corpus)
    ids = np.concatenate([ids, extra])
    shown = len(ids)
    if len(ids) > MAX_POINTS:
        rng = np.random.default_rng([seed, 11])
        keep_rows = np.isin(ids, kept_ids)
        sample = rng.choice(np.nonzero(~keep_rows)[0], size=max(MAX_POINTS - int(keep_rows.sum()), 0), replace=False)
        ids = ids[np.sort(np.concatenate([np.nonzero(keep_rows)[0], sample]))]
    vectors = store.vectors_for_ids(ids) if len(ids) else np.zeros((0, adaptation.shape[1]), np.float32)
    png, explained = projection_png(adaptation, vectors, np.isin(ids, kept_ids))
    note = (f"<p>PCA of {len(adaptation)} adaptation, {len(ids)} candidate embeddings"
            f"{f' (a seeded sample of {shown})' if shown > len(ids) else ''}; the two axes explain "
            f"{explained.sum():.0%} of their variance.</p>")
    return note + _img(png, "PCA projection of adaptation, candidate and selected embeddings", "projection")


def _scores(selection: Any, candidates: Any, summary: dict[str, Any], query_config: dict[str, Any]) -> str:
    import pyarrow as pa

    keep = selection.column("keep").to_numpy(zero_copy_only=False).astype(bool)
    parts = []
    columns = [(f.name, selection.column(f.name)) for f in selection.schema
               if f.name not in NOT_SCORES and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]
    cand_keep = np.isin(candidates.column("candidate_id").to_numpy(), selection.filter(selection.column("keep")).column("id").to_numpy())
    columns.append(("similarity", candidates.column("similarity")))
    flat = []
    for name, column in columns:
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        mask = cand_keep if name == "similarity" else keep
        finite = values[np.isfinite(values)]
        if len(np.unique(finite)) < 2:
            flat.append(f"<code>{html.escape(name)}</code> ({_cell(finite[0]) if len(finite) else 'no finite value'} for every row)")
            continue
        lines = thresholds(name, values, mask, summary, query_config)
        label = "candidate similarity to its nearest adaptation example" if name == "similarity" else name
        parts.append(f'<figure class="score" data-column="{html.escape(name)}">'
                     f"{_img(histogram_png(label, values, mask, lines), f'histogram of {name}', name)}"
                     f"<figcaption>{html.escape(label)}"
                     f"{': ' + html.escape('; '.join(l for _, l in lines)) if lines else ''}</figcaption></figure>")
    if flat:
        parts.append(f"<p>Not drawn (one value): {', '.join(flat)}.</p>")
    return "".join(parts)


def _nearest(store: Any, work: Workdir, adaptation: Any, selection: Any, query_config: dict[str, Any], seed: int) -> str:
    from albat.stores.tables import read_array

    vectors = read_array(work.query / "adaptation.npy")
    kept = selection.filter(selection.column("keep"))
    kept_ids = kept.column("id").to_numpy()
    if len(kept_ids) == 0:
        return "<p><em>nothing was selected</em></p>"
    text_column = store.read_info().get("text_column", "text")
    adapt_column = query_config.get("text_column", "text")
    if adapt_column not in adaptation.column_names:
        adapt_column = text_column if text_column in adaptation.column_names else adaptation.column_names[1]
    rng = np.random.default_rng([seed, 13])
    sample = np.sort(rng.choice(len(vectors), size=min(NEAREST_SAMPLE, len(vectors)), replace=False))
    order, sims = nearest_selected(vectors[sample], store.vectors_for_ids(kept_ids), NEAREST_K)
    texts = dict(zip(kept_ids.tolist(), store.texts_for_ids(kept_ids, text_column)))
    adapt_texts = adaptation.column(adapt_column).to_pylist()
    blocks = []
    for row, i in enumerate(sample):
        items = "".join(f"<li><span class=\"sim\">{sims[row, j]:.3f}</span> #{int(kept_ids[order[row, j]])}: "
                        f"{html.escape(shorten(texts.get(int(kept_ids[order[row, j]]))))}</li>" for j in range(order.shape[1]))
        blocks.append(f'<div class="example"><p><b>adaptation example {int(i)}</b>: {html.escape(shorten(adapt_texts[i]))}</p>'
                      f"<ol>{items}</ol></div>")
    return (f"<p>{len(sample)} adaptation examples (seeded sample) and their {order.shape[1]} most similar selected "
            "rows (cosine of the embeddings).</p>" + "".join(blocks))


def _composition(con: Any, store: Any) -> str:
    from albat.stores.embedding_store import SOURCE
    from albat.stores.views import fetch_table

    info = store.read_info() or {}
    columns = [SOURCE] + [c for c in info.get("keep_columns") or []]
    parts = []
    for column in columns:
        quoted = '"' + column.replace('"', '""') + '"'
        distinct = fetch_table(con, f"SELECT count(DISTINCT {quoted}) AS n FROM corpus").column("n")[0].as_py()
        if not distinct or distinct > MAX_GROUPS:
            if column != SOURCE:
                continue
        rows = fetch_table(con, f"""
            WITH c AS (SELECT CAST({quoted} AS VARCHAR) AS g, count(*) AS n FROM corpus GROUP BY 1),
                 p AS (SELECT CAST(m.{quoted} AS VARCHAR) AS g, count(*) AS n FROM candidates k
                       JOIN corpus m ON m.albat_id = k.candidate_id GROUP BY 1),
                 s AS (SELECT CAST(m.{quoted} AS VARCHAR) AS g, count(*) AS n FROM selection k
                       JOIN corpus m ON m.albat_id = k.id WHERE k.keep GROUP BY 1)
            SELECT c.g AS "{column}", c.n AS corpus, coalesce(p.n, 0) AS candidates, coalesce(s.n, 0) AS selected
            FROM c LEFT JOIN p USING (g) LEFT JOIN s USING (g)
            ORDER BY selected DESC, candidates DESC, corpus DESC LIMIT {MAX_GROUPS}""").to_pylist()
        groups = [str(r[column]) for r in rows]
        fractions = {}
        for part in ("corpus", "candidates", "selected"):
            total = sum(r[part] for r in rows) or 1
            fractions[part] = [r[part] / total for r in rows]
        parts.append(f'<div class="composition" data-column="{html.escape(column)}"><h3>{html.escape(column)}</h3>'
                     + _img(composition_png(groups, fractions, f"rows by {column}"), f"composition by {column}",
                            f"composition-{column}") + _table(rows) + "</div>")
    return "".join(parts)


STYLE = """body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;
font-size:.9em;vertical-align:top}th{background:#f3f3f3}figure.score{display:inline-block;margin:.5em}
img.plot{max-width:100%}pre{background:#f7f7f7;padding:1em;overflow:auto;max-height:40em;font-size:.8em}
.sim{font-family:monospace;color:#1f77b4}section{margin-bottom:2em}"""


def _page(work: Workdir, summary: dict[str, Any], sections: list[tuple[str, str, str]]) -> str:
    from albat import __version__

    method = html.escape(str(summary.get("method", "?")))
    nav = " · ".join(f'<a href="#{sid}">{html.escape(title.split(",")[0])}</a>' for sid, title, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{html.escape(title)}</h2>{content}</section>' for sid, title, content in sections)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>albat report: {method}</title>"
            f"<style>{STYLE}</style></head><body><h1 id=\"title\">albat report: {method}, "
            f"{_cell(summary.get('kept'))} of {_cell(summary.get('considered'))} rows kept</h1>"
            f"<p>Work directory <code>{html.escape(work.root.name)}</code>; albat {__version__}.</p>"
            f"<nav>{nav}</nav>{body}</body></html>")
