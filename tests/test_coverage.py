"""Coverage (pipeline/methods/coverage.py): knn's round-robin with each adaptation example's
neighbours re-ranked by a score, by hand, and the v1 filter walking that order."""
from __future__ import annotations

import numpy as np

from albat.pipeline.methods.albat import BUDGET, INVALID_GRADIENT, KEPT, proposition_filter
from albat.pipeline.methods.coverage import covered_rows, explain_turn, pair_scores, rank_within_query
from albat.pipeline.methods.knn import round_robin_order


def test_rank_within_query_by_hand() -> None:
    query = np.array([0, 0, 0, 1, 1])
    rank = np.array([0, 1, 2, 0, 1])
    score = np.array([0.1, 0.9, 0.5, 0.3, 0.3])  # query 1: a tie goes to the lower retrieval rank
    np.testing.assert_array_equal(rank_within_query(query, rank, score), [2, 0, 1, 0, 1])


def test_with_the_cosine_as_score_it_is_knns_order() -> None:
    rng = np.random.default_rng(0)
    n_q, k = 7, 9
    query = np.repeat(np.arange(n_q), k)
    rank = np.tile(np.arange(k), n_q)
    sims = np.sort(rng.random((n_q, k)))[:, ::-1].ravel()  # cosine falls with the rank
    ids = rng.integers(0, 30, len(query))  # shared neighbours: duplicates across examples
    allowed = rng.random(len(query)) > 0.1
    ours = round_robin_order(query, rank_within_query(query, rank, sims), ids, allowed)
    np.testing.assert_array_equal(ours, round_robin_order(query, rank, ids, allowed))


def test_covered_rows_by_hand() -> None:
    # example 0 retrieved ids 10, 11, 12 (ranks 0-2); example 1 retrieved 20, 10, 21
    query = np.array([0, 0, 0, 1, 1, 1])
    rank = np.array([0, 1, 2, 0, 1, 2])
    pair_ids = np.array([10, 11, 12, 20, 10, 21])
    row_ids = np.array([12, 11, 10, 21, 20])  # 20 scored, none blocked here
    row_score = np.array([5.0, 1.0, 0.0, 9.0, 2.0])
    order, turn, q = covered_rows(query, rank, pair_ids, row_ids, row_score)
    # round 0: example 0's best is 12, example 1's best is 21; round 1: 11 and 20; round 2: 10 (ex 0)
    np.testing.assert_array_equal(row_ids[order], [12, 21, 11, 20, 10])
    np.testing.assert_array_equal(turn, [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(q, [0, 0, 0, 1, 1])
    # a candidate not among the scored rows (blocked) is never walked
    order, turn, _ = covered_rows(query, rank, pair_ids, np.array([12, 11, 21, 20]), np.array([5.0, 1.0, 9.0, 2.0]))
    assert 10 not in np.array([12, 11, 21, 20])[order] and len(order) == 4


def test_pair_scores_marks_unscored_pairs() -> None:
    score, found = pair_scores(np.array([3, 1, 7]), np.array([7, 3]), np.array([0.5, 0.25]))
    np.testing.assert_array_equal(found, [True, False, True])
    np.testing.assert_array_equal(score, [0.25, -np.inf, 0.5])


def test_v1_filter_walks_the_given_order_and_keeps_its_bound() -> None:
    delta = np.array([0.0, 0.0, 5.0, 0.0])  # row 2 invalid by loss at tau = 1
    grads = np.array([[1.0, 0.0], [0.0, 3.0], [0.0, 0.0], [-1.0, 0.0]])
    curvature = np.array([4.0, 3.0, 2.0, 1.0])
    plain = proposition_filter(delta, grads, curvature, bound=np.inf, tau=1.0, budget=2)
    np.testing.assert_array_equal(plain.order, [0, 1])
    walked = proposition_filter(delta, grads, curvature, bound=np.inf, tau=1.0, budget=2, walk=np.array([3, 2, 1, 0]))
    np.testing.assert_array_equal(walked.order, [3, 1])  # row 2 skipped as invalid, the walk's order kept
    assert walked.status[0] == BUDGET and walked.status[3] == KEPT
    # the set bound still applies along the walk: row 3 alone drifts 1 (kept), row 1 would move the
    # mean to ‖(-1, 3)‖/2 = 1.58 > 1 (rejected), row 0 cancels row 3 (drift 0, kept)
    bounded = proposition_filter(delta, grads, curvature, bound=1.0, tau=1.0, budget=3, walk=np.array([3, 1, 0]))
    np.testing.assert_array_equal(bounded.order, [3, 0])
    assert bounded.status[1] == INVALID_GRADIENT


def test_explain_turn_lines() -> None:
    assert explain_turn(4, 1, 7, 2) == "round-robin position 4, neighbour 1 (by score) of adaptation example 7"
    assert "budget filled in round 2, before its turn as neighbour 5" in explain_turn(-1, 5, 3, 2)
    assert explain_turn(-1, -1, -1, 2) == "no adaptation example retrieved it"
