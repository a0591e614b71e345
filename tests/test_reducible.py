"""ALBAT's `reducible` objective (pipeline/methods/reducible.py): scores by hand, and the bench's
gap / convergence arithmetic (benchmarks/bench_lm.py) on hand-checkable numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from albat.pipeline.methods.reducible import explain_reducible, reducible_scores, zscore


def test_zscore_by_hand_and_constant_input() -> None:
    np.testing.assert_allclose(zscore(np.array([1.0, 2.0, 3.0])), [-math.sqrt(1.5), 0.0, math.sqrt(1.5)])
    np.testing.assert_array_equal(zscore(np.array([4.0, 4.0])), [0.0, 0.0])  # a constant term ranks nothing
    assert zscore(np.array([])).shape == (0,)


def test_reducible_is_the_loss_adaptation_removes() -> None:
    loss0 = np.array([5.0, 5.0, 3.0])
    loss_s = np.array([4.0, 5.5, 1.0])  # -> reducible 1, -0.5, 2
    rel = np.array([0.9, 0.5, 0.1])
    score, red = reducible_scores(loss0, loss_s, rel, relevance_weight=0.0)
    np.testing.assert_allclose(red, [1.0, -0.5, 2.0])
    assert list(np.argsort(-score)) == [2, 0, 1]  # alone, the most reducible first
    score, _ = reducible_scores(loss0, loss_s, rel, relevance_weight=1.0)
    # z(red) = (red - 5/6)/std, z(rel) = (rel - 0.5)/std: by hand
    z_red = (red - red.mean()) / red.std()
    z_rel = (rel - rel.mean()) / rel.std()
    np.testing.assert_allclose(score, z_red + z_rel)
    assert np.argmax(score) == 0  # relevant and reducible beats the most reducible but irrelevant


def test_summed_units_rank_the_whole_texts_likelihood_ratio() -> None:
    loss0, loss_s = np.array([3.0, 3.0]), np.array([2.0, 2.5])  # per token: row 0 more reducible
    units = np.array([4.0, 20.0])  # row 1 has five times the tokens
    score, red = reducible_scores(loss0, loss_s, np.zeros(2), 0.0, units)
    np.testing.assert_allclose(red, [4.0, 10.0])  # 4 x 1.0 and 20 x 0.5
    assert np.argmax(score) == 1
    assert np.argmax(reducible_scores(loss0, loss_s, np.zeros(2), 0.0)[0]) == 0


def test_lm_unit_counts_are_the_predicted_tokens() -> None:
    import torch

    from albat.pipeline.surrogates.base import Surrogate
    from albat.pipeline.surrogates.lm import LmSurrogate, Tokens

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    tokens = Tokens(torch.zeros_like(mask), mask)
    # BOS + 2, BOS + 3, and a lone BOS (counted as 1, as token_nll's clamp does)
    np.testing.assert_array_equal(LmSurrogate.unit_counts(None, tokens), [2.0, 3.0, 1.0])
    np.testing.assert_array_equal(Surrogate.unit_counts(None, tokens), [1.0, 1.0, 1.0])


def test_relevance_weight_moves_the_choice_to_relevance() -> None:
    loss0, loss_s = np.array([2.0, 2.0]), np.array([1.0, 1.9])  # row 0 more reducible
    rel = np.array([0.2, 0.8])  # row 1 more relevant
    assert np.argmax(reducible_scores(loss0, loss_s, rel, 0.5)[0]) == 0
    assert np.argmax(reducible_scores(loss0, loss_s, rel, 2.0)[0]) == 1


def test_explanations_name_the_deciding_term() -> None:
    kept = explain_reducible(True, 1.5, 0.3, 1.2, 0.3, 1.0, 0.7)
    assert kept.startswith("kept: score +1.5000") and "decided by reducible loss" in kept
    rejected = explain_reducible(False, 0.1, 0.01, -0.2, 0.3, 1.0, 0.7)
    assert rejected.startswith("rejected: budget filled") and "< the last kept score +0.7000" in rejected


def test_gap_closed_and_steps_to_reach() -> None:
    from benchmarks.bench_lm import gap_closed, parse_ratios, parse_variants, steps_to_reach

    assert gap_closed(150.0, 200.0, 100.0) == pytest.approx(0.5)
    assert gap_closed(200.0, 200.0, 100.0) == 0.0
    assert gap_closed(220.0, 200.0, 100.0) == pytest.approx(-0.2)  # worse than adding nothing
    assert math.isnan(gap_closed(1.0, 2.0, 2.0))
    curve = {"25": 300.0, "50": 180.0, "100": 150.0, "200": 149.0}
    assert steps_to_reach(curve, 180.0) == 50  # at or below counts
    assert steps_to_reach(curve, 100.0) is None
    assert steps_to_reach({"100": 1.0, "25": 2.0}, 2.0) == 25  # checkpoints in step order, not key order
    assert parse_ratios("2,8,32@16") == [(2, None), (8, None), (32, 16)]
    assert parse_variants(["albat_red=albat:objective=reducible,relevance_weight=0"]) == {
        "albat_red": ("albat", ["objective=reducible", "relevance_weight=0"])}
