"""The benchmarks' paired comparison: per-seed differences, by hand."""
import math
from pathlib import Path

import numpy as np

import pytest

from benchmarks.bench_lm import robustness_rows
from benchmarks.report import paired_difference


def test_paired_difference_by_hand():
    mean, sd, n = paired_difference({0: 10.0, 1: 14.0, 2: 12.0}, {0: 11.0, 1: 15.0, 2: 14.0, 3: 1.0})
    assert n == 3 and mean == pytest.approx(-4 / 3)  # seed 3 is in one arm only: left out
    assert sd == pytest.approx(math.sqrt(((-1 + 4 / 3) ** 2 * 2 + (-2 + 4 / 3) ** 2) / 2))
    assert paired_difference({0: 1.0}, {0: 3.0}) == (-2.0, 0.0, 1)
    mean, sd, n = paired_difference({0: 1.0}, {1: 1.0})
    assert n == 0 and math.isnan(mean) and math.isnan(sd)


def _runs(cell, method, values):
    return {(*cell, method): [{"key": {"seed": s}, "perplexity": v} for s, v in enumerate(values)]}


def test_robustness_pairs_runs_by_seed():
    """A method 1 below knn on every seed, where the seeds move both by ±5: a tie unpaired (the seed std
    is 5), better beyond the spread paired (the differences do not vary); the cell is evidence paired."""
    cell = ("d", 16, 128)
    groups = {**_runs(cell, "knn", [100.0, 105.0, 110.0]), **_runs(cell, "mine", [99.0, 104.0, 109.0]),
              **_runs(cell, "random", [104.0, 109.5, 114.0]), **_runs(cell, "oracle", [98.0, 103.0, 108.0])}
    rows = {r[0]: r for r in robustness_rows(groups, [cell], ["knn", "mine", "random"])}
    method, cells, within, beyond, mean, p_within, p_beyond, evidence = rows["mine"]
    assert (cells, within, beyond, mean) == (1, "1 of 1", 0, "-1.00")
    assert (p_within, p_beyond, evidence) == ("1 of 1", 1, "1 of 1")
    assert rows["knn"][5:] == ["1 of 1", 1, "1 of 1"]  # knn against random (mine is not a baseline): 4-4.5 below
    groups.update(_runs(cell, "random", [104.0, 103.0, 115.0]))  # knn − random: -4, +2, -5, so not beyond paired; random − oracle 6, 0, 7: still evidence
    assert robustness_rows(groups, [cell], ["knn"])[0][5:] == ["1 of 1", 0, "0 of 1"]


def test_variant_counts_pair_runs_by_seed():
    """Contrastive track (MRR, higher is better): a variant 0.01 above knn on every seed while the seeds move
    every method by ±0.05 ties unpaired and wins paired; the cell is evidence only paired."""
    from benchmarks.bench_select import variant_counts

    seeds = lambda values: dict(enumerate(values))  # noqa: E731
    cell = {"knn": seeds([0.30, 0.35, 0.40]), "mine": seeds([0.31, 0.36, 0.41]),
            "random": seeds([0.28, 0.33, 0.385]), "oracle": seeds([0.30, 0.35, 0.40])}
    row = variant_counts({("d", 16, 64): cell}, ["mine"])[0]
    assert row[:5] == ["mine", "1", "0/0/0", "0/1/0", "+0.0100"]  # unpaired: a control cell, a tie
    assert row[5:] == ["1/0/0", "0/0/0"]  # paired: oracle − random 0.02, 0.02, 0.015: evidence; mine wins


def test_report_only_tabulates_the_given_seeds_and_methods():
    from benchmarks.bench_lm import tabulated

    records = [{"key": {"method": "backbone", "domain": "d"}}, {"key": {"method": "full", "seed": 0}},
               {"key": {"method": "knn", "seed": 0}}, {"key": {"method": "knn", "seed": 3}},
               {"key": {"method": "dsir", "seed": 0}}]
    kept = tabulated(records, {0, 1, 2}, {"knn"})
    assert [r["key"].get("seed") for r in kept if r["key"]["method"] == "knn"] == [0]
    assert {r["key"]["method"] for r in kept} == {"backbone", "full", "knn"}


def test_report_only_keeps_its_own_grid():
    from benchmarks.bench_lm import grid, tabulated

    assert grid("16,64", "2,32@16") == [(16, 2), (16, 32), (64, 2)]
    records = [{"key": {"method": "full", "seed": 0}},
               {"key": {"method": "knn", "seed": 0, "n_a": 16, "m": 512}},
               {"key": {"method": "knn", "seed": 0, "n_a": 64, "m": 512}},
               {"key": {"method": "knn", "seed": 0, "n_a": 16, "m": 128}}]
    cells = {(n_a, ratio * n_a) for n_a, ratio in grid("16", "32")}
    kept = tabulated(records, {0}, {"knn"}, cells)
    assert [(r["key"].get("n_a"), r["key"].get("m")) for r in kept] == [(None, None), (16, 512)]
    assert len(tabulated(records, {0}, {"knn"})) == 4  # no cells given: every cell


def test_report_only_keeps_the_given_domains():
    from benchmarks.bench_lm import tabulated

    records = [{"key": {"method": "backbone", "domain": "a"}}, {"key": {"method": "backbone", "domain": "b"}},
               {"key": {"method": "knn", "seed": 0, "domain": "a", "n_a": 16, "m": 128}},
               {"key": {"method": "knn", "seed": 0, "domain": "b", "n_a": 16, "m": 128}}]
    kept = tabulated(records, {0}, {"knn"}, None, {"b"})
    assert [(r["key"]["method"], r["key"]["domain"]) for r in kept] == [("backbone", "b"), ("knn", "b")]
    assert len(tabulated(records, {0}, {"knn"}, None, None)) == 4  # no domains given: every domain


def test_roc_auc_by_hand_and_against_brute_force():
    from benchmarks.bench_image import roc_auc

    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1) = 3 of 4
    assert roc_auc(np.array([0.9, 0.5, 0.4, 0.1]), np.array([1, 0, 1, 0])) == 0.75
    assert roc_auc(np.array([0.3, 0.3]), np.array([1, 0])) == 0.5  # a tie counts one half
    assert roc_auc(np.array([1.0, 0.0]), np.array([0, 1])) == 0.0
    rng = np.random.default_rng(0)
    scores, positive = rng.integers(0, 5, 40).astype(float), rng.random(40) < 0.4
    pos, neg = scores[positive], scores[~positive]
    brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert abs(roc_auc(scores, positive) - brute) < 1e-12
    with pytest.raises(ValueError):
        roc_auc(np.array([0.1, 0.2]), np.array([1, 1]))


def test_a_variant_s_emit_options_go_to_emit_and_the_rest_to_the_method():
    from benchmarks.bench_lm import split_emit_options

    assert split_emit_options(["spread=2", "backbone_weight=0.5", "spread_floor=0"]) == (
        ["spread=2", "spread_floor=0"], ["--backbone-weight", "0.5"])
    assert split_emit_options([]) == ([], [])


def test_the_lm_judge_of_a_variant_trains_like_the_benchmark_unless_told_otherwise():
    from types import SimpleNamespace

    from benchmarks.bench_lm import lm_judge_options

    args = SimpleNamespace(steps=100, lr=2e-3, batch_size=16, rank=8, alpha=16.0, max_length=64)
    assert lm_judge_options(args, Path("ckpt"), ["judge=lm", "judge_lr=0.01"]) == [
        "model=ckpt", "judge_steps=100", "judge_batch_size=16", "lora_rank=8", "lora_alpha=16.0", "max_length=64"]
    assert "judge_steps=100" not in lm_judge_options(args, Path("ckpt"), ["judge_steps=40"])


def test_two_names_that_would_share_one_selection_are_refused():
    from types import SimpleNamespace

    from benchmarks.bench_lm import check_distinct
    from benchmarks.report import parse_variants

    args = SimpleNamespace(steps=100, lr=2e-3, batch_size=16, rank=8, alpha=16.0, max_length=64, surrogate_steps=50,
                           projection_dim=1024)
    variants = parse_variants(["lm_a=auto:judge=lm,lambdas=0 1 4", "lm_a64=auto:judge=lm,lambdas=0 1 4,max_length=64",
                               "lm_a32=auto:judge=lm,lambdas=0 1 4,max_length=32", "clf_l4=classifier:backbone_weight=4",
                               "clf=classifier"])
    check_distinct(args, Path("ckpt"), ["none", "classifier", "clf_l4", "lm_a", "lm_a32", "oracle"], variants)
    with pytest.raises(SystemExit, match="lm_a64 and lm_a run"):  # 64 is the benchmark's own max_length
        check_distinct(args, Path("ckpt"), ["lm_a", "lm_a64"], variants)
    with pytest.raises(SystemExit, match="clf and classifier"):
        check_distinct(args, Path("ckpt"), ["classifier", "clf"], variants)


def test_the_verdict_tables_judge_the_named_products_else_albat_s_configurations():
    from benchmarks.bench_lm import product_methods

    methods = ["none", "knn", "albat", "albat_v2", "auto_lm", "lm_auto"]
    assert product_methods(methods) == ["albat", "albat_v2", "auto_lm"]
    assert product_methods(methods, "lm_auto,missing") == ["lm_auto"]


def test_the_default_benchmark_runs_the_recommended_lm_method_unless_a_variant_takes_its_name():
    from types import SimpleNamespace

    from benchmarks.bench_lm import METHODS, all_variants

    assert "auto_lm" in METHODS
    assert all_variants(SimpleNamespace(variant=[]))["auto_lm"] == ("auto", ["judge=lm"])
    assert all_variants(SimpleNamespace(variant=["auto_lm=auto:judge=lm,folds=2"]))["auto_lm"] == (
        "auto", ["judge=lm", "folds=2"])


def _plan_args(**kw):
    from types import SimpleNamespace

    base = dict(steps=200, checkpoints="25,50,100,200", sizes="16,64", ratios="2,32@16", seeds="0,1",
                full_seeds="0", methods="none,knn,oracle")
    return SimpleNamespace(**{**base, **kw})


def test_runs_left_counts_every_pending_run_once_and_skips_oracle_outside_the_pool():
    import json

    from benchmarks.bench_lm import runs_left

    domains = [{"slug": "a"}, {"slug": "b", "in_pool": False}]
    left = runs_left(_plan_args(), Path("ckpt"), domains, set())
    # 2 full references (seed 0 of each domain) + cells (16,2) (16,32) (64,2) x 2 seeds x (3 methods in a, 2 in b)
    assert len(left) == 2 + 3 * 2 * (3 + 2)
    assert not [k for k in left if k["method"] == "oracle" and k["domain"] == "b"]
    done = {json.dumps(left[0]), json.dumps(left[5])}
    assert runs_left(_plan_args(), Path("ckpt"), domains, done) == [k for i, k in enumerate(left) if i not in (0, 5)]


def test_the_plan_scales_measured_runs_to_the_asked_steps_and_adds_each_method_s_selection():
    from benchmarks.bench_lm import estimate_seconds, plan_line, progress_line, run_costs

    records = [{"key": {"method": "knn", "steps": 100, "seed": s}, "train_seconds": 30.0, "eval_seconds": 6.0,
                "curve": {"25": 1, "50": 1, "100": 1}, "select_seconds": 2.0} for s in range(3)]
    records.append({"key": {"method": "backbone"}, "perplexity": 9.0})  # no time: ignored
    assert run_costs([], 200, 4) is None
    train, evals, select = run_costs(records, 200, 4)
    assert (train, evals, select) == (60.0, 8.0, {"knn": 2.0})
    left = [{"method": "knn"}, {"method": "none"}, {"method": "auto_lm"}]
    assert estimate_seconds(left, (train, evals, select)) == (3 * 68.0 + 2.0, ["auto_lm"])
    line = plan_line(_plan_args(), left, records)
    assert line.startswith("bench_lm: 3 LoRA runs left (200 steps, 4 evaluations each): about 3 min")
    assert line.endswith("no measured selection time for auto_lm")
    assert "no run measured yet" in plan_line(_plan_args(), left, [])
    assert progress_line(2, 10, 120.0) == "bench_lm: 2/10 runs, 2.0 min elapsed, ETA 8 min"
    assert progress_line(0, 10, 0.0) == "bench_lm: 0/10 runs, 0.0 min elapsed"


def test_bench_run_retries_a_reader_stage_once_and_never_a_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader stage refused while another bench process briefly holds the shared store is retried once;
    a second failure, or any failure of embed/index (whose refusal backbone_store handles), stops the run."""
    from benchmarks import bench_select

    calls: list[str] = []
    codes = iter([2, 0, 2, 2, 2])
    monkeypatch.setattr(bench_select, "albat", lambda argv: calls.append(argv[0]) or next(codes))
    monkeypatch.setattr(bench_select, "RETRY_PAUSE", [0.0])
    bench_select.run("filter", "--work", "w")  # refused, then done
    assert calls == ["filter", "filter"]
    with pytest.raises(SystemExit, match="albat query --work w failed"):
        bench_select.run("query", "--work", "w")  # a real error fails twice
    assert calls[2:] == ["query", "query"]
    with pytest.raises(SystemExit, match="albat embed"):
        bench_select.run("embed", "--work", "w")
    assert calls[4:] == ["embed"]


def test_benchmark_domains_name_a_missing_data_folder_and_unknown_slugs(tmp_path):
    import json

    from benchmarks.bench_select import load_domains

    with pytest.raises(SystemExit, match="make data-select"):
        load_domains(tmp_path, "")
    (tmp_path / "domains.json").write_text(json.dumps([{"slug": "a"}, {"slug": "b", "in_pool": False}]))
    assert [d["slug"] for d in load_domains(tmp_path, "")] == ["a", "b"]
    assert [d["slug"] for d in load_domains(tmp_path, "", outside_pool=False)] == ["a"]
    assert [d["slug"] for d in load_domains(tmp_path, "b")] == ["b"]
    with pytest.raises(SystemExit, match="--domains: c not in .*its domains: a, b"):
        load_domains(tmp_path, "a,c")
