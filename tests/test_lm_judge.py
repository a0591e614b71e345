"""`auto`'s λ grid and its `judge=lm` fold judge (pipeline/methods/auto.py, lm_judge.py): the pure
choice over λ on hand-made tables, the judge's score against an independent recomputation on a tiny
causal LM, and `albat run --method auto` with `judge=lm` and a λ grid on real Wikipedia summaries."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import SmallWiki, albat, small_run_config
from lm_fixtures import SENTENCES, make_tiny_lm

from albat.pipeline.methods.auto import DEFAULTS, MethodScores, choose_weight, parse_lambdas, weight_verdict
from albat.pipeline.methods.lm_judge import LmJudge, fit_steps, fold_steps, judge_weights
from albat.stores.errors import AlbatError


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("lm"))


def test_lambdas_parse_sorted_without_repeats_and_refuse_bad_values() -> None:
    assert parse_lambdas("4, 0,1,1") == [0.0, 1.0, 4.0] == parse_lambdas("1 4 0") and parse_lambdas("") == [] and parse_lambdas(" , ") == []
    for bad in ("-1", "nan", "inf", "two"):
        with pytest.raises(AlbatError, match="not a finite number >= 0"):
            parse_lambdas(f"0,{bad}")


def test_choose_weight_takes_the_best_lambda_and_ties_go_to_the_smaller() -> None:
    tables = {0.0: [MethodScores("knn", [-5.0, -5.2])],
              1.0: [MethodScores("knn", [-4.9, -5.0]), MethodScores("dsir", [-5.1, -5.1])],
              4.0: [MethodScores("knn", [-4.8, -4.9]), MethodScores("dsir", [-4.7, -5.3])]}
    lam, pick = choose_weight(tables)
    assert (lam, pick.name) == (4.0, "knn")  # mean −4.85 beats λ = 1's −4.95 and dsir's −5.0
    tables[1.0][0].scores = [-4.8, -4.9]
    assert choose_weight(tables)[0] == 1.0  # equal to λ = 4: add less
    tables = {0.0: [MethodScores("knn", [-4.0, -4.1])], 1.0: [MethodScores("knn", [-4.5, -4.6])]}
    assert choose_weight(tables)[0] == 0.0
    tables[1.0][0].error = "fold 0: budget too large"
    assert choose_weight(tables)[0] == 0.0  # a λ whose every method failed is skipped
    with pytest.raises(AlbatError, match="at any λ"):
        choose_weight({1.0: [MethodScores("knn", [-1.0], error="x")]})


def test_weight_verdict_needs_a_margin_beyond_the_spread_over_adding_nothing() -> None:
    alone = [MethodScores("knn", [-5.0, -5.1])]
    close = {0.0: alone, 1.0: [MethodScores("knn", [-4.9, -5.2])]}  # margin 0, spread 0.21
    assert weight_verdict(close)["helps"] is False
    clear = {0.0: alone, 2.0: [MethodScores("knn", [-4.0, -4.1])]}
    verdict = weight_verdict(clear)
    assert verdict["helps"] is True and verdict["lambda"] == 2.0 and verdict["margin"] == pytest.approx(1.0)
    assert weight_verdict({1.0: alone}) == {}  # no λ = 0 to compare with


def test_a_fold_trains_its_share_of_the_steps() -> None:
    assert fold_steps(100, 43, 64) == 67 and fold_steps(100, 64, 64) == 100 and fold_steps(3, 1, 16) == 1


def passes(steps: int, batch: int, rows: float) -> float:
    """Passes over `rows` rows that `steps` steps of `batch` make (a batch holds at most every row)."""
    return steps * min(batch, rows) / rows


def test_a_fold_fit_makes_as_many_passes_as_the_real_run() -> None:
    # more rows than the batch on both sides: the steps scale with the fold's share (fold_steps)
    assert fit_steps(100, 16, 43, 43, 64) == 67 == fold_steps(100, 43, 64)
    assert fit_steps(100, 16, 43 + 341, 43, 64) == 67  # with kept rows, 576 real rows
    # the real arm fits in one batch (16 texts alone, batch 16): full-batch on both sides, all 100 steps
    assert fit_steps(100, 16, 11, 11, 16) == 100
    # fold full-batch (11 rows), real run not (24 rows, batch 16): 100·16/24 = 66.7 passes, one per step
    assert fit_steps(100, 16, 11, 11, 24) == 67
    for steps, batch, rows, n_train, n in [(100, 16, 99, 11, 16), (100, 16, 11, 11, 16), (200, 8, 30, 20, 30),
                                           (100, 16, 11, 11, 24), (50, 4, 5, 4, 6)]:
        real = rows * n / n_train
        got = fit_steps(steps, batch, rows, n_train, n)
        assert passes(got, batch, rows) == pytest.approx(passes(steps, batch, real), rel=0.05, abs=0.5 * batch / rows)
    assert fit_steps(3, 16, 1, 1, 200) == 1  # at least one step
    # steps: round eleven's judge, the fold's share of the steps whatever the rows
    assert fit_steps(100, 16, 11, 11, 16, "steps") == 69 and fit_steps(100, 16, 43, 43, 64, "steps") == 67
    with pytest.raises(ValueError, match="fold_scale"):
        fit_steps(100, 16, 43, 43, 64, "batch")


def test_judge_weights_match_emit() -> None:
    np.testing.assert_allclose(judge_weights(6, 3, 2.0), [1, 1, 1, 1, 1, 1, 4, 4, 4])  # λ·n_train/|kept| = 2·6/3
    np.testing.assert_allclose(judge_weights(4, 5, 0.0), [1, 1, 1, 1])


class _Store:
    """texts_for_ids over a fixed id → text map (the judge reads nothing else from the store)."""

    def __init__(self, texts: dict[int, str]):
        self.texts = texts

    def texts_for_ids(self, ids: np.ndarray) -> list[str]:
        return [self.texts[int(i)] for i in ids]


def _judge(lm: Path, steps: int = 6, scale: str | None = None, batch: int = 4, layers: int | None = None) -> LmJudge:
    from albat.pipeline.methods.base import SelectionRequest

    request = SelectionRequest(candidates=None, pairs=None, blocked_ids=np.zeros(0, np.int64),
                               store=_Store({100 + i: s for i, s in enumerate(SENTENCES[6:])}),
                               adaptation_texts=SENTENCES[:6], adaptation_vectors=np.zeros((6, 2), np.float32),
                               budget=4, seed=3)
    opts = {"model": str(lm), "device": "cpu", "judge_steps": steps, "judge_batch_size": batch, "judge_lr": 1e-2,
            "lora_rank": 2, "lora_alpha": 4.0, "max_length": 16, "target_modules": "",
            "fold_scale": scale or DEFAULTS["fold_scale"],
            "judge_layers": DEFAULTS["judge_layers"] if layers is None else layers}
    return LmJudge(request, opts)


def test_lm_judge_scores_minus_the_held_out_log_perplexity(tiny_lm: Path) -> None:
    from albat.pipeline.surrogates.lora_train import perplexity, train_lora

    judge = _judge(tiny_lm)
    train, held, kept = np.array([0, 1, 2, 3]), np.array([4, 5]), np.array([101, 100])
    score, tiebreak = judge.score(train, held, kept, 2.0)
    assert score == tiebreak
    texts = SENTENCES[:4] + [SENTENCES[6], SENTENCES[7]]  # the kept ids sorted: 100, 101
    # fold_scale=passes (the default): 6 rows here stand for 9 in the real run, where judge_steps 6 at
    # batch 4 make 6·4/9 passes; at batch 4 on 6 rows that is round(2.67·6/4) = 4 steps
    model, tok, _ = train_lora(tiny_lm, texts, np.array([1, 1, 1, 1, 4, 4.0]), steps=4, batch_size=4, lr=1e-2,
                               rank=2, alpha=4.0, max_length=16, seed=3, device="cpu")
    assert score == pytest.approx(-math.log(perplexity(model, tok, SENTENCES[4:6], 16)), abs=1e-6)
    assert judge.fits == 1
    per_text: list = []  # the race's per-text scores (drop_z): minus each held-out text's mean NLL, same fit
    perplexity(model, tok, SENTENCES[4:6], 16, rows=per_text)
    np.testing.assert_allclose(judge.row_scores(train, held, kept, 2.0), -np.array(per_text), atol=1e-6)
    assert len(per_text) == 2 and min(-np.array(per_text)) <= score <= max(-np.array(per_text))  # a weighted mean
    assert judge.score(train, held, kept[::-1], 2.0)[0] == score and judge.fits == 1  # cached: the same fit
    alone = judge.score(train, held, kept, 0.0)[0]
    assert judge.score(train, held, kept[:0], 1.0)[0] == alone and judge.fits == 2  # λ = 0 = nothing kept
    assert alone != score
    judge.cache.clear()  # after `unload` the checkpoint carries no adapter: a refit gives the same number
    assert judge.score(train, held, kept, 2.0)[0] == pytest.approx(score, abs=1e-6)
    assert not [n for n, _ in judge.base.named_parameters() if "lora" in n]


def test_the_fold_alone_arm_trains_every_step_of_a_full_batch_run(tiny_lm: Path) -> None:
    from albat.pipeline.surrogates.lora_train import perplexity, train_lora

    train, held = np.array([0, 1, 2, 3]), np.array([4, 5])
    # 6 texts fit in the real run's batch 8: full-batch, so the fold's 4 texts alone train all 6 steps
    judge = _judge(tiny_lm, batch=8)
    alone = judge.score(train, held, np.zeros(0, np.int64), 0.0)[0]
    model, tok, _ = train_lora(tiny_lm, SENTENCES[:4], np.ones(4), steps=6, batch_size=8, lr=1e-2,
                               rank=2, alpha=4.0, max_length=16, seed=3, device="cpu")
    assert alone == pytest.approx(-math.log(perplexity(model, tok, SENTENCES[4:6], 16)), abs=1e-6)
    # round eleven's fold_scale=steps trained the fold's share, round(6·4/6) = 4 steps: a different fit
    shorter = _judge(tiny_lm, batch=8, scale="steps").score(train, held, np.zeros(0, np.int64), 0.0)[0]
    model, tok, _ = train_lora(tiny_lm, SENTENCES[:4], np.ones(4), steps=4, batch_size=8, lr=1e-2,
                               rank=2, alpha=4.0, max_length=16, seed=3, device="cpu")
    assert shorter == pytest.approx(-math.log(perplexity(model, tok, SENTENCES[4:6], 16)), abs=1e-6)
    assert shorter != pytest.approx(alone, abs=1e-6)


def test_the_cut_judge_is_lora_on_the_top_layers_of_the_full_model(tmp_path: Path) -> None:
    """judge_layers=1 on a 3-layer LM: the same score as LoRA on the top layer only of the whole model
    (peft's regex targets), trained by the full forward pass; each text's layer input is computed once."""
    from albat.pipeline.surrogates.lora_train import perplexity, train_lora

    lm = make_tiny_lm(tmp_path, layers=3)
    judge = _judge(lm, layers=1)
    train, held, kept = np.array([0, 1, 2, 3]), np.array([4, 5]), np.array([101, 100])
    score = judge.score(train, held, kept, 2.0)[0]
    assert sorted(judge.states.states) == [("a", i) for i in range(6)] + [("s", 100), ("s", 101)]
    texts = SENTENCES[:4] + [SENTENCES[6], SENTENCES[7]]
    top_only = r".*layers\.2\.self_attn\.(q_proj|v_proj)"  # peft's default targets, in the top layer only
    model, tok, _ = train_lora(lm, texts, np.array([1, 1, 1, 1, 4, 4.0]), steps=4, batch_size=4, lr=1e-2, rank=2,
                               alpha=4.0, max_length=16, seed=3, device="cpu", target_modules=top_only)
    assert score == pytest.approx(-math.log(perplexity(model, tok, SENTENCES[4:6], 16)), abs=1e-5)
    full = judge_full = _judge(lm).score(train, held, kept, 2.0)[0]  # every layer adapted: another fit
    assert full != pytest.approx(score, abs=1e-4) and judge_full < 0
    alone = judge.score(train, held, kept, 0.0)[0]
    assert alone != score and len(judge.states.states) == 8  # the fold alone reuses the cached states
    assert not [n for n, _ in judge.top.named_parameters() if "lora" in n]


def test_lm_judge_needs_a_model() -> None:
    from albat.pipeline.methods.auto import auto_options

    with pytest.raises(AlbatError, match="judge=lm needs model=DIR"):  # auto and `albat diagnose` read options here
        auto_options({"judge": "lm"})


BUDGET = 8


def test_run_auto_with_the_lm_judge_chooses_a_method_and_a_weight(small_wiki: SmallWiki, tiny_encoder: str,
                                                                  tiny_lm: Path, tmp_path: Path) -> None:
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    options = {"methods": "knn,random", "judge": "lm", "model": tiny_lm, "lambdas": "0,1,4", "folds": 2,
               "judge_steps": 4, "judge_batch_size": 4, "max_length": 32, "lora_rank": 2,
               "drop_z": 0}  # every fit of every fold (the race is tested in test_auto_method)
    args = [x for k, v in options.items() for x in ("--method-option", f"{k}={v}")]
    assert albat("run", "--config", config, "--quiet", "--method", "auto", "--budget", BUDGET, *args) == 0
    work = tmp_path / "work"
    auto = json.loads((work / "tasks/default/output" / "manifest.json").read_text())["selection"]["auto"]
    assert auto["judge"] == "lm" and auto["score"] == "loss" and auto["lambdas"] == [0.0, 1.0, 4.0]
    assert auto["fold_scale"] == "passes" and auto["judge_batch_size"] == 4 and auto["judge_steps"] == 4
    assert auto["judge_layers"] == 0
    tables = {t["lambda"]: t["table"] for t in auto["tables"]}
    assert sorted(tables) == [0.0, 1.0, 4.0]
    for lam, table in tables.items():
        assert [r["method"] for r in table] == ["knn", "random"]
        assert all(r["error"] is None and len(r["fold_scores"]) == 2 and max(r["fold_scores"]) < 0 for r in table)
    assert tables[0.0][0]["fold_scores"] == tables[0.0][1]["fold_scores"]  # λ = 0: the fold alone, whatever the method
    best = max(((lam, r) for lam, table in tables.items() for r in table), key=lambda x: (x[1]["mean"], -x[0]))
    assert auto["lambda"] == best[0] and auto["backbone_weight"] == best[0]
    selection = pq.read_table(work / "tasks/default/filter" / "selection.parquet").to_pandas()
    kept = selection[selection["keep"]]
    if best[0] == 0:
        assert auto["choice"] == "none" and kept.empty
    else:
        assert auto["choice"] == best[1]["method"] and len(kept) == BUDGET
        np.testing.assert_allclose(kept["weight"], best[0])  # the chosen λ rides on w_b
    assert auto["weight_verdict"]["spread"] >= 0
    # `albat diagnose` cross-validates with the same judge, folds and seed: the same fold scores
    out = tmp_path / "diagnose.json"
    assert albat("diagnose", work, "--config", config, "--budgets", BUDGET, "--lams", "1,4", "--json", out, *args) == 0
    report = json.loads(out.read_text())
    for lam in (1.0, 4.0):
        table = next(t["table"] for t in report["tables"] if t["lambda"] == lam)
        assert [r["method"] for r in table] == ["knn", "random", "none"]
        for mine, theirs in zip(table, tables[lam]):
            assert mine["fold_scores"] == pytest.approx(theirs["fold_scores"], abs=1e-5)
        assert table[2]["fold_scores"] == pytest.approx(tables[0.0][0]["fold_scores"], abs=1e-5)  # none = λ 0
    assert report["prediction"]["helps"] == any(g["helps"] for g in report["grid"])


def test_auto_refuses_a_bad_grid_or_a_missing_model_before_any_work() -> None:
    from albat.pipeline.methods.auto import AutoMethod

    with pytest.raises(AlbatError, match="lambdas='1 -2'"):
        AutoMethod(lambdas="1 -2")
    with pytest.raises(AlbatError, match="judge=lm needs model=DIR"):
        AutoMethod(judge="lm", lambdas="0 1")
    assert AutoMethod(lambdas="4,0").grid == [0.0, 4.0]
