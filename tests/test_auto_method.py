"""`auto` (pipeline/methods/auto.py): the pure fold logic on tiny inputs, and `albat run --method auto`
on real Wikipedia summaries with MiniLM, whose manifest must hold the whole choice table."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SmallWiki, albat, write_config

from albat.pipeline.methods.auto import (MethodScores, assign_folds, augmentation_verdict, choose, fold_budget,
                                   fold_budgets, fold_request, heldout_scores, parse_methods, split_options)
from albat.stores.errors import AlbatError


def test_folds_are_balanced_seeded_and_cover_every_row() -> None:
    fold_of = assign_folds(11, 3, seed=4)
    assert sorted(np.bincount(fold_of).tolist()) == [3, 4, 4]
    assert np.array_equal(fold_of, assign_folds(11, 3, seed=4))
    assert not np.array_equal(fold_of, assign_folds(11, 3, seed=5))
    with pytest.raises(AlbatError, match="cannot make 3 folds"):
        assign_folds(5, 3, seed=0)


def test_fold_budget_keeps_the_ratio() -> None:
    assert fold_budget(64, 12, 16) == 48 and fold_budget(10, 2, 3) == 7 and fold_budget(1, 1, 16) == 1
    assert fold_budget(0, 5, 6) == 0
    assert fold_budgets(64, 16, 3, seed=0) == [40, 44, 44]  # folds of 6, 5, 5: train 10, 11, 11


def test_choose_takes_the_best_mean_and_ties_go_first() -> None:
    table = [MethodScores("knn", [0.5, 0.7]), MethodScores("dsir", [0.6, 0.6]), MethodScores("none", [0.1, 0.2])]
    assert choose(table).name == "knn"  # 0.6 = 0.6: the earlier one
    table[1].scores = [0.6, 0.61]
    assert choose(table).name == "dsir"
    table[1].error = "fold 1: budget too large"
    assert choose(table).name == "knn"
    assert table[1].row()["mean"] is None and table[0].row()["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1), abs=1e-6)
    saturated = [MethodScores("knn", [1.0], [-0.3]), MethodScores("dsir", [1.0], [-0.2])]
    assert choose(saturated).name == "dsir"  # equal MRR: the lower held-out loss decides
    with pytest.raises(AlbatError, match="no candidate method"):
        choose([MethodScores("knn", [0.1], error="x")])


def test_verdict_needs_a_margin_beyond_the_fold_spread() -> None:
    close = [MethodScores("knn", [0.50, 0.60]), MethodScores("none", [0.50, 0.52])]  # margin 0.04, spread 0.071
    assert augmentation_verdict(close)["helps"] is False
    clear = [MethodScores("knn", [0.70, 0.72]), MethodScores("none", [0.50, 0.52])]
    verdict = augmentation_verdict(clear)
    assert verdict["helps"] is True and verdict["margin"] == pytest.approx(0.2)
    assert augmentation_verdict([MethodScores("knn", [0.5])])["helps"] is None  # none was not a candidate


def test_options_split_by_method_prefix() -> None:
    own, per = split_options({"folds": 2, "albat.beta": 0.5, "dsir.pool": "corpus"}, ["albat", "dsir", "knn"])
    assert own == {"folds": 2} and per == {"albat": {"beta": 0.5}, "dsir": {"pool": "corpus"}, "knn": {}}
    assert split_options({}, ["dsir"])[1] == {"dsir": {"pool": "candidates"}}
    with pytest.raises(AlbatError, match="not among methods"):
        split_options({"classifier.c": 1}, ["knn"])
    with pytest.raises(AlbatError, match="cannot be chosen"):
        parse_methods("knn,auto")
    with pytest.raises(AlbatError, match="twice"):
        parse_methods("knn,knn")
    assert parse_methods("classifier random") == parse_methods(" classifier, random,") == ["classifier", "random"]
    with pytest.raises(AlbatError, match="twice"):
        parse_methods("knn knn")


def test_fold_request_keeps_only_the_training_rows_pairs() -> None:
    from albat.pipeline.methods.base import SelectionRequest

    pairs = pa.table({"query_idx": pa.array([0, 0, 1, 2, 2], pa.int32()), "candidate_id": pa.array([10, 11, 11, 12, 13], pa.int64()),
                      "rank": pa.array([0, 1, 0, 0, 1], pa.int32()), "similarity": pa.array([.9, .8, .7, .6, .5], pa.float32())})
    cands = pa.table({"candidate_id": pa.array([10, 11, 12, 13], pa.int64()), "block_reason": pa.array([None, None, None, "dup"])})
    request = SelectionRequest(candidates=cands, pairs=pairs, blocked_ids=np.array([13]), store=None,
                               adaptation_texts=["a", "b", "c"], adaptation_vectors=np.eye(3, dtype=np.float32),
                               budget=4, seed=0)
    sub = fold_request(request, np.array([2, 1]), 2, {})
    assert sub.adaptation_texts == ["b", "c"] and np.array_equal(sub.adaptation_vectors, np.eye(3)[[1, 2]])
    assert sub.pairs.column("query_idx").to_pylist() == [0, 1, 1]  # examples 1, 2 renumbered 0, 1
    assert sub.candidates.column("candidate_id").to_pylist() == [11, 12, 13]
    assert sub.candidates.column("blocked").to_pylist() == [False, False, True] and sub.budget == 2


def test_heldout_scores_by_hand() -> None:
    import torch

    from albat.pipeline.surrogates.contrastive import Pairs

    e = np.eye(4, dtype=np.float32)
    held = Pairs(e[:2], e[:2])  # each query is its own document: rank 0
    distract = Pairs(e[2:], e[2:])
    mrr, loss = heldout_scores(torch.zeros(4, 4), held, distract)
    assert mrr == 1.0 and loss == pytest.approx(0.0, abs=1e-6)
    tie = Pairs(np.stack([(e[0] + e[1]) / np.sqrt(2), e[1]]).astype(np.float32), e[:2])  # query 0 ties documents 0 and 1
    mrr, loss = heldout_scores(torch.zeros(4, 4), tie, distract)
    assert mrr == 1.0 and loss == pytest.approx(np.log(2) / 2, abs=1e-5)  # a tie is not a miss; it costs log 2
    swapped = Pairs(e[[1, 0]], e[:2])  # query i is document 1 − i: rank 1
    assert heldout_scores(torch.zeros(4, 4), swapped, distract)[0] == 0.5


BUDGET = 12


@pytest.fixture(scope="module")
def auto_run(small_wiki: SmallWiki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("auto")
    config = write_config(tmp / "run.toml", f"""
work = "work"
seed = 5
[embed]
input = ["{small_wiki.corpus}"]
id_column = "id"
[query]
adaptation = ["{small_wiki.adaptation}"]
exclude = ["{small_wiki.eval}"]
k = 16
[filter]
method = "auto"
budget = {BUDGET}
methods = "albat,knn,dsir,random,none"
folds = 2
judge_steps = 30
distractors = 64
bank_size = 32
"albat.steps" = 10
"albat.bank_size" = 32
"albat.projection_dim" = 256
""")
    assert albat("run", "--config", config, "--quiet") == 0
    return tmp / "work"


def test_run_auto_records_the_choice_table(auto_run: Path) -> None:
    manifest = json.loads((auto_run / "tasks/default/output" / "manifest.json").read_text())
    assert manifest["method"] == "auto"
    auto = manifest["selection"]["auto"]
    names = [row["method"] for row in auto["table"]]
    assert names == ["albat", "knn", "dsir", "random", "none"]
    for row in auto["table"]:
        assert row["error"] is None and len(row["fold_scores"]) == 2
        assert all(0 < s <= 1 for s in row["fold_scores"])  # MRR
        assert row["mean"] == pytest.approx(np.mean(row["fold_scores"]), abs=1e-6)
    best = max(auto["table"], key=lambda r: (r["mean"], np.mean(r["fold_tiebreak"])))
    assert auto["choice"] == best["method"] and auto["seed"] == 5 and auto["folds"] == 2
    assert auto["folds_run"] == 2 and auto["stop_after"] == 2  # two folds: nothing to stop early
    assert auto["verdict"]["best"] == auto["choice"]
    assert auto["fold_budgets"] == [6, 6]  # 8 adaptation examples, folds of 4
    selection = pq.read_table(auto_run / "tasks/default/filter" / "selection.parquet").to_pandas()
    kept = selection[selection["keep"]]
    assert len(kept) == (0 if auto["choice"] == "none" else BUDGET)
    assert selection["reason"].str.endswith(f"(auto chose {auto['choice']}: mean held-out mrr "
                                            f"{best['mean']:.4f} over 2 folds)").all()


def test_run_auto_is_deterministic(auto_run: Path) -> None:
    before = json.loads((auto_run / "tasks/default/output" / "manifest.json").read_text())["selection"]["auto"]["table"]
    selection = pq.read_table(auto_run / "tasks/default/filter" / "selection.parquet").to_pandas()
    (auto_run / "tasks/default/_stages" / "filter.json").unlink()
    assert albat("filter", "--config", auto_run.parent / "run.toml", "--quiet") == 0
    record = json.loads((auto_run / "tasks/default/_stages" / "filter.json").read_text())["summary"]["auto"]["table"]
    assert [r["fold_scores"] for r in record] == [r["fold_scores"] for r in before]
    assert pq.read_table(auto_run / "tasks/default/filter" / "selection.parquet").to_pandas().equals(selection)


def test_unknown_candidate_option_is_an_error(auto_run: Path, capsys: pytest.CaptureFixture) -> None:
    rc = albat("filter", "--config", auto_run.parent / "run.toml", "--method-option", "albat.nonsense=1", "--quiet")
    assert rc == 2 and "method albat: unknown key 'nonsense'" in capsys.readouterr().err
    rc = albat("filter", "--config", auto_run.parent / "run.toml", "--method-option", "knn.k=1", "--quiet")
    assert rc == 2 and "method knn: unknown key 'k'" in capsys.readouterr().err


def test_recommend_needs_a_helping_cell() -> None:
    from albat.pipeline.diagnose import default_budgets, recommend

    rows = [{"budget": 4, "lambda": 1.0, "best": "knn", "best_mean": 0.6, "helps": True},
            {"budget": 16, "lambda": 1.0, "best": "dsir", "best_mean": 0.7, "helps": True},
            {"budget": 64, "lambda": 1.0, "best": "albat", "best_mean": 0.9, "helps": False}]
    assert recommend(rows) == {"helps": True, "method": "dsir", "budget": 16, "lambda": 1.0}
    assert recommend([{**r, "helps": False} for r in rows])["method"] == "none"
    assert default_budgets(12) == [3, 12, 48] and default_budgets(1) == [1, 4]


def test_diagnose_prints_the_choice_table_and_a_prediction(auto_run: Path, capsys: pytest.CaptureFixture,
                                                             tmp_path: Path) -> None:
    capsys.readouterr()
    out = tmp_path / "diagnose.json"
    assert albat("diagnose", auto_run, "--config", auto_run.parent / "run.toml", "--budgets", f"4,{BUDGET}",
                 "--lams", "1", "--json", out) == 0
    text = capsys.readouterr().out
    assert f"auto chooser at m = {BUDGET}, λ = 1" in text and "prediction:" in text
    for name in ("albat", "knn", "dsir", "random", "none"):
        assert f"\n{name}" in text
    report = json.loads(out.read_text())
    assert [(g["budget"], g["lambda"]) for g in report["grid"]] == [(4, 1.0), (BUDGET, 1.0)]
    # the same folds, seed and options as the auto run: the same fold scores
    auto = json.loads((auto_run / "tasks/default/output" / "manifest.json").read_text())["selection"]["auto"]["table"]
    at_budget = next(t["table"] for t in report["tables"] if t["budget"] == BUDGET)
    assert [r["fold_scores"] for r in at_budget] == [r["fold_scores"] for r in auto]
    assert report["prediction"]["helps"] == any(g["helps"] for g in report["grid"])


def test_prefer_keeps_the_default_unless_beaten_on_every_fold() -> None:
    table = [MethodScores("knn", [0.50, 0.70, 0.60]), MethodScores("dsir", [0.55, 0.60, 0.58])]
    assert choose(table).name == "knn"
    assert choose(table, prefer="dsir").name == "dsir"  # knn's mean is higher, but it loses fold 2
    table[0].scores = [0.56, 0.61, 0.59]
    assert choose(table, prefer="dsir").name == "knn"  # better on every fold
    assert choose(table, prefer="none").name == "knn"  # not a candidate: plain best


def test_clear_leader_needs_a_win_on_every_fold_and_lambda_zero_counts_once() -> None:
    from albat.pipeline.methods.auto import arms, clear_leader

    lead, close = MethodScores("knn", [-4.0, -4.1]), MethodScores("dsir", [-4.2, -4.0])
    assert not clear_leader([lead, close])  # best mean, but dsir wins fold 1
    close.scores = [-4.2, -4.2]
    assert clear_leader([lead, close]) and clear_leader([lead]) and clear_leader([])
    alone = [MethodScores("knn", [-5.0, -5.0]), MethodScores("dsir", [-5.0, -5.0])]  # λ = 0: the same fit twice
    assert [t.name for t in arms({0.0: alone, 1.0: [lead, close]})] == ["knn", "knn", "dsir"]
    assert clear_leader(arms({0.0: alone, 1.0: [lead, close]}))
    assert clear_leader(arms({0.0: [MethodScores("knn", [-3.0, -3.0]), MethodScores("dsir", [-3.0, -3.0])],
                              1.0: [lead]}))  # adding nothing wins: its twin rows do not block the stop
    close.error = "fold 0: failed"
    assert arms({1.0: [lead, close]}) == [lead]  # a failed method cannot be chosen


@pytest.mark.parametrize("stop_after, scores, folds_run, chosen", [
    (2, {0.0: [-5, -5, -5], 1.0: [-4, -4, -9], 4.0: [-4.5, -4.5, -4.5]}, 2, 1.0),  # λ = 1 wins folds 0, 1: stop
    (2, {0.0: [-5, -5, -5], 1.0: [-4, -4.6, -4], 4.0: [-4.5, -4.5, -4.5]}, 3, 1.0),  # λ = 4 wins fold 1: go on
    # every fold: fold 2 turns the choice (the case the stop gambles on; it never happened on the benchmark)
    (0, {0.0: [-5, -5, -5], 1.0: [-4, -4, -9], 4.0: [-4.5, -4.5, -4.5]}, 3, 4.0),
    (3, {0.0: [-5, -5, -5], 1.0: [-4, -4, -9], 4.0: [-4.5, -4.5, -4.5]}, 3, 4.0),
])
def test_cross_validate_stops_after_the_folds_a_clear_leader_needs(monkeypatch: pytest.MonkeyPatch, stop_after: int,
                                                                   scores: dict, folds_run: int, chosen: float) -> None:
    """A fake judge scores (fold, λ) from a table; the folds after `stop_after` are fitted only while no
    (method, λ) has won every fold so far."""
    from types import SimpleNamespace

    from albat.pipeline.methods import auto

    n, fits = 9, []
    fold_of = assign_folds(n, 3, 0)

    class FakeJudge:
        def __init__(self, request, opts):
            pass

        def score(self, train, held, kept, lam):
            fits.append((int(fold_of[held[0]]), lam))
            value = scores[lam if len(kept) else 0.0][int(fold_of[held[0]])]
            return value, value

    picked = SimpleNamespace(ids=np.array([7, 8]), keep=np.array([True, True]))
    monkeypatch.setattr(auto, "Judge", FakeJudge)
    monkeypatch.setattr(auto, "fold_request", lambda *a: None)
    monkeypatch.setattr(auto, "get_method", lambda name, **kw: SimpleNamespace(select=lambda sub: picked))
    request = SimpleNamespace(adaptation_vectors=np.zeros((n, 2)), seed=0)
    opts = {**auto.DEFAULTS, "stop_after": stop_after}
    out = auto.cross_validate(request, ["knn"], {"knn": {}}, opts, [4], [0.0, 1.0, 4.0])
    assert sorted({f for f, _ in fits}) == list(range(folds_run)) and len(fits) == 3 * folds_run
    assert all(len(out[(4, lam)][0].scores) == folds_run for lam in (0.0, 1.0, 4.0))
    assert auto.choose_weight({lam: out[(4, lam)] for lam in (0.0, 1.0, 4.0)})[0] == chosen


def test_judge_lm_defaults_to_the_recommended_rows_and_grid_unless_given() -> None:
    from albat.pipeline.methods.auto import LM_PRESET, auto_options

    methods, opts, _ = auto_options({"judge": "lm", "model": "some/dir"})
    assert methods == ["classifier"] and opts["lambdas"] == LM_PRESET["lambdas"] == "0 1 4" and opts["drop_z"] == 3
    methods, opts, _ = auto_options({"judge": "lm", "model": "some/dir", "methods": "knn,dsir", "lambdas": ""})
    assert methods == ["knn", "dsir"] and opts["lambdas"] == ""  # what the user gives wins, an empty grid too
    methods, opts, _ = auto_options({})
    assert methods == ["albat", "knn", "dsir", "classifier", "random"] and opts["lambdas"] == ""  # contrastive
    assert opts["drop_z"] == 0


def test_report_rows_of_the_choice_table_mark_the_choice() -> None:
    from albat.pipeline.report import auto_rows

    row = lambda name, scores: {"method": name, "fold_scores": scores, "mean": float(np.mean(scores)), "std": 0.1,
                                "select_seconds": 0.5, "error": None}
    grid = {"choice": "none", "lambda": 0.0, "tables": [
        {"lambda": 0.0, "table": [row("classifier", [-4.0, -4.1])]},
        {"lambda": 4.0, "table": [row("classifier", [-4.5, -4.6])]}]}
    rows = auto_rows(grid)
    assert [(r["λ"], r["method"], r[""]) for r in rows] == [(0.0, "classifier", "chosen"), (4.0, "classifier", "")]
    assert rows[0]["fold scores"] == "-4.0000 -4.1000"
    plain = {"choice": "knn", "backbone_weight": 1.0, "table": [row("albat", [0.5]), row("knn", [0.6])]}
    assert [r[""] for r in auto_rows(plain)] == ["", "chosen"] and {r["λ"] for r in auto_rows(plain)} == {1.0}


def test_report_shows_how_auto_chose(auto_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert albat("report", auto_run, "--out", out) == 0
    page = out.read_text()
    auto = json.loads((auto_run / "tasks/default/_stages" / "filter.json").read_text())["summary"]["auto"]
    assert '<section id="auto">' in page and f"chose <b>{auto['choice']}</b> by 2-fold" in page
    assert page.count('<td>chosen</td>') == 1 and all(f"<td>{r['method']}</td>" in page for r in auto["table"])


def test_diagnose_takes_autos_lambda_grid_unless_given(auto_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "diagnose.json"
    assert albat("diagnose", auto_run, "--config", auto_run.parent / "run.toml", "--budgets", BUDGET,
                 "--method-option", "lambdas=0 2", "--json", out) == 0
    assert [(g["budget"], g["lambda"]) for g in json.loads(out.read_text())["grid"]] == [(BUDGET, 0.0), (BUDGET, 2.0)]
    assert albat("diagnose", auto_run, "--config", auto_run.parent / "run.toml", "--budgets", BUDGET,
                 "--method-option", "lambdas=0 2", "--lams", "1", "--json", out) == 0  # --lams wins
    assert [g["lambda"] for g in json.loads(out.read_text())["grid"]] == [1.0]


def test_paired_t_and_losers_of_a_race() -> None:
    from albat.pipeline.methods.auto import losers, paired_t

    assert paired_t([1.0, 2.0, 3.0], [0.0, 1.5, 2.0]) == pytest.approx(np.mean([1, .5, 1]) / (np.std([1, .5, 1], ddof=1) / np.sqrt(3)))
    assert paired_t([1.0, 1.0], [0.0, 0.0]) == float("inf") and paired_t([1.0], [0.0]) == 0.0
    assert paired_t([0.0, 0.0], [1.0, 1.0]) == 0.0  # the leader behind: never a drop
    rows = {"a": np.array([-4.0, -4.1, -3.9, -4.2]), "b": np.array([-5.0, -5.2, -4.8, -5.1]),
            "c": np.array([-4.05, -4.0, -4.0, -4.3])}
    keys = {k: (float(v.mean()), 0.0) for k, v in rows.items()}
    assert losers(rows, keys, 3.0) == ("a", ["b"])  # c is close to a on some rows: it stays in the race
    assert losers(rows, keys, 3.0, min_rows=5) == ("a", [])  # too few rows scored yet
    assert losers({"a": rows["a"]}, keys, 3.0) == ("a", []) and losers({}, keys, 3.0) == (None, [])


@pytest.mark.parametrize("drop_z, fold_means, fits, chosen", [
    (3.0, {0.0: -5.0, 1.0: -4.0, 4.0: -4.02}, 3 + 2, 1.0),  # λ = 0 dropped after fold 0; λ = 1 wins 2 folds: stop
    (3.0, {0.0: -5.0, 1.0: -4.0, 4.0: -4.6}, 3, 1.0),  # both others dropped after fold 0: one left, stop at once
    (3.0, {0.0: -4.0, 1.0: -5.0, 4.0: -5.5}, 3, 0.0),  # adding nothing is left alone: every λ > 0 dropped
    (0.0, {0.0: -5.0, 1.0: -4.0, 4.0: -4.02}, 3 + 3, 1.0),  # no race: stop after 2 folds as before
])
def test_the_race_drops_clear_losers_and_fits_the_rest(monkeypatch: pytest.MonkeyPatch, drop_z: float,
                                                       fold_means: dict, fits: int, chosen: float) -> None:
    """judge=lm with drop_z: after each fold a (method, λ) whose held-out texts trail the leader's by a
    paired t above drop_z is dropped (never fitted again, never chosen); one candidate left ends the folds."""
    from types import SimpleNamespace

    from albat.pipeline.methods import auto, lm_judge

    n, calls = 15, []
    fold_of = assign_folds(n, 3, 0)
    wobble = 0.1 * np.sin(np.arange(n))  # per-text noise, the same for every arm (paired) ...
    own = 0.03 * np.cos(7 * np.arange(n))  # ... and λ = 4's own: λ = 1 stays ahead on each fold, t < 3 throughout

    class FakeLmJudge:
        def __init__(self, request, opts):
            pass

        def row_scores(self, train, held, kept, lam):
            lam = lam if len(kept) else 0.0
            return fold_means[lam] + wobble[held] + (own[held] if lam == 4.0 else 0.0)

        def score(self, train, held, kept, lam):
            calls.append(lam if len(kept) else 0.0)
            value = float(self.row_scores(train, held, kept, lam).mean())
            return value, value

    picked = SimpleNamespace(ids=np.array([7, 8]), keep=np.array([True, True]))
    monkeypatch.setattr(lm_judge, "LmJudge", FakeLmJudge)
    monkeypatch.setattr(auto, "fold_request", lambda *a: None)
    monkeypatch.setattr(auto, "get_method", lambda name, **kw: SimpleNamespace(select=lambda sub: picked))
    opts = {**auto.DEFAULTS, "judge": "lm", "drop_z": drop_z}
    out = auto.cross_validate(SimpleNamespace(adaptation_vectors=np.zeros((n, 2)), seed=0), ["classifier"],
                              {"classifier": {}}, opts, [4], [0.0, 1.0, 4.0])
    assert len(calls) == fits
    tables = {lam: out[(4, lam)] for lam in (0.0, 1.0, 4.0)}
    assert auto.choose_weight(tables)[0] == chosen
    if drop_z and chosen:
        assert tables[0.0][0].error.startswith("dropped after fold 1: below classifier at λ = 1 ")
        assert auto.weight_verdict(tables)["helps"] is True
    elif drop_z:  # the verdict (and so the manifest) survives every λ > 0 being dropped
        assert tables[4.0][0].error.startswith("dropped after fold 1: below the fold alone (λ = 0) ")
        assert auto.weight_verdict(tables) == {"best": None, "lambda": None, "helps": False, "margin": None,
                                               "spread": None}
        assert auto.augmentation_verdict(tables[0.0])["best"] == "classifier"
    assert all(np.sum(fold_of == f) == 5 for f in range(3))
