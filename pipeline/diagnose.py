"""`albat diagnose WORK`: the auto chooser's table before anything is selected or emitted, and a
prediction of whether augmentation helps at all, at which budget m and weight λ.

It needs a completed query stage. For every (m, λ) of a small grid it cross-validates every candidate
method on the adaptation set exactly as `--method auto` does (pipeline/methods/auto.py: seeded folds,
selection on the training folds, the contrastive judge on the held-out fold), except that it scores
every fold (`stop_after` does not apply: the spreads need them all). Augmentation is
predicted to help where the best method's mean fold score beats `none`'s by more than the larger of
their fold spreads (std over folds). The λ grid is `--lams`, else auto's `lambdas` (with judge=lm: 0 1 4
unless given), else λ/2, λ, 2λ around emit's backbone_weight. The recommendation is the (method, m, λ) with the best mean
among those cells, or `none` when no cell clears its spread. Nothing is written unless `--json FILE`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from albat.stores.errors import AlbatError


def default_budgets(budget: int) -> list[int]:
    """m/4, m and 4m (at least 1, no repeats) around the configured budget m."""
    return sorted({max(1, budget // 4), max(1, budget), 4 * max(1, budget)})


def grid_rows(results: dict[tuple[int, float], list], prefer: str = "") -> list[dict[str, Any]]:
    """One row per (m, λ): the best method, its margin over `none` and whether it clears the spread."""
    from albat.pipeline.methods.auto import augmentation_verdict, choose

    rows = []
    for (budget, lam), table in sorted(results.items()):
        best = choose(table, prefer)
        rows.append({"budget": budget, "lambda": lam, "best": best.name, "best_mean": round(best.mean, 6),
                     **{k: v for k, v in augmentation_verdict(table).items() if k != "best"}})
    return rows


def recommend(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The helping cell with the best mean, or `none` if no cell helps beyond its spread."""
    helping = [r for r in rows if r["helps"]]
    if not helping:
        return {"helps": False, "method": "none", "budget": 0, "lambda": None}
    best = max(helping, key=lambda r: r["best_mean"])
    return {"helps": True, "method": best["best"], "budget": best["budget"], "lambda": best["lambda"]}


def _format(cell: tuple[int, float], table: list, rows: list[dict[str, Any]], advice: dict[str, Any],
            score: str, folds: int) -> str:
    lines = [f"auto chooser at m = {cell[0]}, λ = {cell[1]:g} ({folds} folds, held-out {score}; the loss breaks ties):",
             f"{'method':<12}{'mean':>9}{'std':>9}{'select s':>10}  fold scores"]
    for t in table:
        row = t.row()
        mean = "error" if row["mean"] is None else f"{row['mean']:.4f}"
        tail = row["error"] or " ".join(f"{s:.4f}" for s in row["fold_scores"])
        lines.append(f"{t.name:<12}{mean:>9}{row['std']:>9.4f}{row['select_seconds']:>10.2f}  {tail}")
    lines += ["", "does augmentation help? best method against none, per budget and λ:",
              f"{'m':>7}{'λ':>7}  {'best':<12}{'mean':>9}{'− none':>9}{'spread':>9}  helps"]
    for r in rows:
        margin = "-" if r["margin"] is None else f"{r['margin']:+.4f}"
        spread = "-" if r["spread"] is None else f"{r['spread']:.4f}"
        lines.append(f"{r['budget']:>7}{r['lambda']:>7g}  {r['best']:<12}{r['best_mean']:>9.4f}{margin:>9}{spread:>9}  {r['helps']}")
    if advice["helps"]:
        lines.append(f"\nprediction: augmentation helps; use --method {advice['method']} --budget {advice['budget']} "
                     f"--backbone-weight {advice['lambda']:g}")
    else:
        lines.append("\nprediction: no method beats none beyond the fold spread at any budget or λ tried; "
                     "train on the adaptation set alone (--method none), or add adaptation examples")
    return "\n".join(lines)


def run_diagnose(config: dict[str, Any], budgets: list[int] | None, lams: list[float] | None,
                 options: dict[str, Any], out: str | None = None) -> str:
    from albat.pipeline.filter import build_request, method_options
    from albat.pipeline.methods.auto import auto_options, cross_validate, parse_lambdas
    from albat.stores.workdir import Workdir

    work = Workdir(config["work"], output=config["emit"]["output"], task=config["task"])
    if not work.stage_record("query"):
        raise AlbatError(f"{work.query}: no completed query stage; run `albat query` first")
    filter_options = config["filter"]
    raw = {**(method_options(filter_options) if filter_options["method"] == "auto" else {}), **options}
    methods, opts, per_method = auto_options(raw)
    opts = {**opts, "stop_after": 0}  # the whole table: every fold of every (m, λ), for the spreads
    if "none" not in methods:  # the prediction compares against training on the adaptation set alone
        methods.append("none")
        per_method["none"] = {}
    budget = int(filter_options["budget"])
    budgets = budgets or default_budgets(budget)
    lam = float(config["emit"]["backbone_weight"])
    lams = lams or parse_lambdas(opts["lambdas"]) or sorted({0.5 * lam, lam, 2 * lam})  # auto's grid, if it has one
    request = build_request(config, work, max(budgets), int(config["seed"]))
    results = cross_validate(request, methods, per_method, opts, budgets, lams)
    rows = grid_rows(results, opts["prefer"])
    advice = recommend(rows)
    cell = (budget if budget in budgets else budgets[0],
            lam if lam in lams else next((x for x in lams if x > 0), lams[0]))  # λ = 0 alone says little
    text = _format(cell, results[cell], rows, advice, opts["score"], opts["folds"])
    if out:
        Path(out).write_text(json.dumps({"seed": int(config["seed"]), "folds": opts["folds"], "score": opts["score"],
                                         "tables": [{"budget": m, "lambda": lam_, "table": [t.row() for t in table]}
                                                    for (m, lam_), table in sorted(results.items())],
                                         "grid": rows, "prediction": advice}, indent=2))
    return text
