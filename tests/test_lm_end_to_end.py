"""`albat run --method albat --surrogate lm` on real Wikipedia summaries with a tiny random LM, then
the trainer hand-off: scripts/train_lora.py trains LoRA on the emitted shards with albat_weight."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SmallWiki, albat, small_run_config
from lm_fixtures import SENTENCES, make_tiny_lm

BUDGET = 10


def _train_lora_module():
    spec = importlib.util.spec_from_file_location("train_lora", REPO / "scripts" / "train_lora.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("lm"))


def _run(tmp: Path, wiki: SmallWiki, encoder: str, lm: Path, method: str = "albat") -> Path:
    config = small_run_config(tmp, wiki, encoder)
    code = albat("run", "--config", config, "--quiet", "--method", method, "--budget", BUDGET,
                 "--surrogate", "lm", "--surrogate-model", lm, "--method-option", "steps=10",
                 "--method-option", "batch_size=8", "--method-option", "max_length=32",
                 "--method-option", "projection_dim=128")
    assert code == 0
    return tmp / "work"


def _score_column(selection) -> str:
    """What albat ranked by: the curvature (objective v1) or the set objective's marginal gain (v2)."""
    return "curvature" if "curvature" in selection else "marginal_gain"


@pytest.fixture(scope="module")
def run_dir(small_wiki: SmallWiki, tiny_encoder: str, tiny_lm: Path, tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("lm_run"), small_wiki, tiny_encoder, tiny_lm)


def test_albat_with_the_lm_surrogate_scores_and_explains_every_candidate(run_dir: Path) -> None:
    selection = pq.read_table(run_dir / "tasks/default/filter" / "selection.parquet").to_pandas()
    candidates = pq.read_table(run_dir / "tasks/default/query" / "candidates.parquet").to_pandas()
    assert sorted(selection["id"]) == sorted(candidates["candidate_id"])
    open_rows = selection[~selection["id"].isin(candidates.loc[candidates["blocked"], "candidate_id"])]
    score = _score_column(selection)
    assert np.isfinite(open_rows[["loss_initial", "loss_adapted", "grad_norm", score]].to_numpy()).all()
    assert (open_rows["loss_initial"] > 0).all()
    kept = selection[selection["keep"]]
    assert 0 < len(kept) <= BUDGET
    assert kept["reason"].str.startswith("kept: ").all()
    manifest = json.loads((run_dir / "tasks/default/output" / "manifest.json").read_text())
    report = manifest["selection"]
    assert report["surrogate"] == "lm" and report["surrogate_fit"]["steps"] == 10
    assert report["surrogate_fit"]["lora_parameters"] > 0


def test_same_seed_same_selection(run_dir: Path, small_wiki: SmallWiki, tiny_encoder: str, tiny_lm: Path,
                                  tmp_path: Path) -> None:
    again = _run(tmp_path, small_wiki, tiny_encoder, tiny_lm)
    first, second = (pq.read_table(d / "tasks/default/filter" / "selection.parquet").to_pandas() for d in (run_dir, again))
    assert first["id"][first["keep"]].tolist() == second["id"][second["keep"]].tolist()
    score = _score_column(first)
    np.testing.assert_array_equal(first[score].to_numpy(), second[score].to_numpy())


def test_gradalign_runs_on_the_lm_surrogate(small_wiki: SmallWiki, tiny_encoder: str, tiny_lm: Path,
                                            tmp_path: Path) -> None:
    work = _run(tmp_path, small_wiki, tiny_encoder, tiny_lm, method="gradalign")
    selection = pq.read_table(work / "tasks/default/filter" / "selection.parquet").to_pandas()
    assert selection["keep"].sum() == BUDGET
    assert np.abs(selection.loc[selection["keep"], "grad_cosine"]).max() > 0


def test_lm_without_a_model_is_a_one_line_error(small_wiki: SmallWiki, tiny_encoder: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    assert albat("run", "--config", config, "--quiet", "--method", "albat", "--surrogate", "lm") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model=DIR" in err[0]
    assert not (tmp_path / "work" / "tasks/default/filter" / "selection.parquet").exists()


def test_train_lora_on_the_emitted_shards(run_dir: Path, tiny_lm: Path, tmp_path: Path) -> None:
    train_lora = _train_lora_module()
    held = tmp_path / "held.parquet"
    import pyarrow as pa

    pq.write_table(pa.table({"text": SENTENCES}), held)
    out = tmp_path / "adapter"
    assert train_lora.main(["--shards", str(run_dir / "tasks/default/output"), "--model", str(tiny_lm), "--out", str(out),
                            "--eval", str(held), "--steps", "5", "--batch-size", "4", "--max-length", "32"]) == 0
    record = json.loads((out / "train_record.json").read_text())
    texts, weights = train_lora.load_shard_set(run_dir / "tasks/default/output")
    assert record["rows"] == len(texts) > BUDGET and np.isfinite(record["eval_perplexity"])
    assert (out / "adapter_config.json").exists() and not (tmp_path / "adapter.tmp").exists()
    assert sorted(set(np.round(weights, 6))) != [1.0]  # backbone rows carry λ·n_A/m·w_b


def test_albat_weight_is_the_loss_weight(tiny_lm: Path) -> None:
    """A row of weight 0 contributes nothing, and scaling every weight changes nothing:
    [a, b] with weights [1, 0] trains exactly like [a] alone (full batches, same seed)."""
    train_lora = _train_lora_module()
    a, b = SENTENCES[0], SENTENCES[5]
    kw = dict(steps=4, lr=1e-2, max_length=32, seed=0)
    both = train_lora.train_lora(tiny_lm, [a, b], np.array([1.0, 0.0]), batch_size=2, **kw)[0]
    alone = train_lora.train_lora(tiny_lm, [a], np.array([1.0]), batch_size=1, **kw)[0]
    scaled = train_lora.train_lora(tiny_lm, [a, b], np.array([3.0, 0.0]), batch_size=2, **kw)[0]
    other = train_lora.train_lora(tiny_lm, [a, b], np.array([1.0, 1.0]), batch_size=2, **kw)[0]
    delta = train_lora.lora_delta(both)
    assert np.abs(delta).max() > 0
    np.testing.assert_allclose(delta, train_lora.lora_delta(alone), atol=1e-6)
    np.testing.assert_allclose(delta, train_lora.lora_delta(scaled), atol=1e-6)
    assert not np.allclose(delta, train_lora.lora_delta(other), atol=1e-4)


def test_reducible_objective_keeps_the_top_scores_and_explains_them(small_wiki: SmallWiki, tiny_encoder: str,
                                                                    tiny_lm: Path, tmp_path: Path) -> None:
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    assert albat("run", "--config", config, "--quiet", "--method", "albat", "--budget", BUDGET, "--surrogate", "lm",
                 "--surrogate-model", tiny_lm, "--method-option", "steps=10", "--method-option", "batch_size=8",
                 "--method-option", "max_length=32", "--method-option", "objective=reducible",
                 "--method-option", "holdout_fraction=0") == 0
    selection = pq.read_table(tmp_path / "work" / "tasks/default/filter" / "selection.parquet").to_pandas()
    open_rows = selection[np.isfinite(selection["reducible_score"])]
    np.testing.assert_allclose(open_rows["reducible_loss"], open_rows["loss_initial"] - open_rows["loss_adapted"])
    np.testing.assert_allclose(open_rows["reducible_score"], open_rows["z_reducible"] + open_rows["z_relevance"])
    kept = selection[selection["keep"]]
    assert len(kept) == BUDGET and kept["reason"].str.startswith("kept: score").all()
    assert kept["reducible_score"].min() >= open_rows.loc[~open_rows["keep"], "reducible_score"].max()
    assert np.abs(open_rows["reducible_loss"]).max() > 0  # 10 steps on all adaptation texts moved the adapter
    report = json.loads((tmp_path / "work" / "tasks/default/output" / "manifest.json").read_text())["selection"]
    assert report["objective"] == "reducible" and report["relevance_weight"] == 1.0


def test_reducible_with_coverage_walks_knns_round_robin(small_wiki: SmallWiki, tiny_encoder: str,
                                                        tiny_lm: Path, tmp_path: Path) -> None:
    """coverage=round_robin: every adaptation example gets its turn, and inside one example's list
    the kept neighbours are the best-scored ones, whatever their retrieval rank."""
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    assert albat("run", "--config", config, "--quiet", "--method", "albat", "--budget", BUDGET, "--surrogate", "lm",
                 "--surrogate-model", tiny_lm, "--method-option", "steps=10", "--method-option", "batch_size=8",
                 "--method-option", "max_length=32", "--method-option", "objective=reducible",
                 "--method-option", "holdout_fraction=0", "--method-option", "coverage=round_robin") == 0
    work = tmp_path / "work" / "tasks/default"
    selection = pq.read_table(work / "filter" / "selection.parquet").to_pandas()
    kept = selection[selection["keep"]].sort_values("selection_rank")
    assert len(kept) == BUDGET and kept["reason"].str.contains("round-robin position").all()
    # round-robin: the turns never go down along the selection order
    assert (np.diff(kept["coverage_turn"].to_numpy()) >= 0).all()
    pairs = pq.read_table(work / "query" / "candidate_pairs.parquet").to_pandas()
    n_examples = pairs["query_idx"].nunique()
    # one pick per example per round; the examples share the picks (an example whose best neighbours
    # were all taken by earlier examples can miss a round, as in knn)
    assert kept["coverage_query"].value_counts().max() <= int(kept["coverage_turn"].max()) + 1
    assert kept["coverage_query"].nunique() >= min(n_examples, BUDGET) - 2
    # inside one example's list, a kept row's score beats every unkept row that example retrieved
    # first (turn before it) -- i.e. the turn is the score order, not the retrieval rank
    scored = selection[np.isfinite(selection["reducible_score"])]
    for q, group in scored[scored["coverage_query"] >= 0].groupby("coverage_query"):
        by_turn = group.sort_values("coverage_turn")["reducible_score"].to_numpy()
        assert (np.diff(by_turn) <= 1e-12).all(), q
    report = json.loads((work / "output" / "manifest.json").read_text())["selection"]
    assert report["coverage"] == "round_robin"


def test_train_lora_curve_is_the_perplexity_of_shorter_runs(tiny_lm: Path) -> None:
    train_lora = _train_lora_module()
    texts = SENTENCES[:6]
    kw = dict(batch_size=2, lr=1e-2, rank=2, alpha=4.0, max_length=32, seed=3)
    held = SENTENCES[6:9]
    evaluate = lambda m, tok: train_lora.perplexity(m, tok, held, 32)  # noqa: E731
    model, tok, report = train_lora.train_lora(tiny_lm, texts, np.ones(6), steps=4, eval_at=(0, 2, 4),
                                               evaluate=evaluate, **kw)
    assert sorted(report["curve"]) == [0, 2, 4] and report["eval_seconds"] >= 0
    short = train_lora.train_lora(tiny_lm, texts, np.ones(6), steps=2, **kw)[0]
    backbone = train_lora.load_causal_lm(tiny_lm)
    assert report["curve"][2] == pytest.approx(evaluate(short, tok), rel=1e-5)
    assert report["curve"][4] == pytest.approx(evaluate(model, tok), rel=1e-5)
    assert report["curve"][0] == pytest.approx(evaluate(*backbone), rel=1e-5)  # LoRA starts at ΔW = 0
    assert report["curve"][4] != report["curve"][0]
