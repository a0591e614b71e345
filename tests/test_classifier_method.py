"""The adaptation-vs-backbone classifier: balanced logistic regression, seeded negatives, top log-odds."""
from __future__ import annotations

import math

import numpy as np
import pytest
from method_fixtures import make_request, make_store

from albat.pipeline.methods.base import get_method
from albat.pipeline.methods.classifier import (ClassifierMethod, default_negatives, fit_classifier, log_odds,
                                         sample_negatives, target_draw)
from albat.stores.errors import AlbatError


def test_default_negatives_by_hand():
    assert default_negatives(5, 50_000) == 1_000  # at least 1000
    assert default_negatives(300, 50_000) == 3_000  # 10 x n_A
    assert default_negatives(5, 300) == 300  # capped by the corpus
    assert default_negatives(0, 10) == 10


@pytest.mark.parametrize("C", [1.0, 0.5])
def test_fit_classifier_balances_the_classes_by_hand(C):
    # 1 positive at +1, 9 negatives at -1. Balanced weights give each class a total weight of 5, so
    # by symmetry the intercept is 0 and the slope w solves w = C * (5 + 5) * sigmoid(-w)
    # (the intercept is not penalised). Unbalanced, the intercept would be about log(1/9).
    model = fit_classifier(np.array([[1.0]]), np.full((9, 1), -1.0), C=C, seed=0)
    at_zero, w, minus_w = log_odds(model, np.array([[0.0], [1.0], [-1.0]]))
    assert at_zero == pytest.approx(0.0, abs=1e-3)
    assert w == pytest.approx(10 * C / (1 + math.exp(w)), abs=5e-3)
    assert minus_w == pytest.approx(-w, abs=1e-3)
    assert w == pytest.approx({1.0: 1.6335, 0.5: 1.1775}[C], abs=5e-3)  # the fixed points, solved numerically


BLOCK = "near-duplicate of adaptation example 0 (similarity 1.000)"
ADAPTATION = np.array([[1.0, 0.1], [1.0, -0.1], [0.9, 0.0], [1.0, 0.0]], np.float32)


def _store(tmp_path):
    """30 backbone rows spread over angles 60..300 degrees (away from the target direction +x),
    then the candidates: 50 on +x (blocked), 51 and 52 identical, 53 on +y, 54 on -x."""
    angles = np.radians(np.linspace(60, 300, 30))
    vectors = np.concatenate([np.stack([np.cos(angles), np.sin(angles)], 1),
                              [[1.0, 0.0], [0.8, 0.6], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]]])
    ids = list(range(1, 31)) + [50, 51, 52, 53, 54]
    return make_store(tmp_path / "s", ids, [""] * len(ids), vectors, shard_rows=8)


@pytest.mark.parametrize("budget, kept", [(0, []), (2, [51, 52]), (3, [51, 52, 53]), (4, [51, 52, 53, 54])])
def test_classifier_keeps_top_log_odds_unblocked_ties_by_id(tmp_path, budget, kept):
    store = _store(tmp_path)
    request = make_request(store, [54, 53, 52, 51, 50], {50: BLOCK}, budget=budget, seed=3, vectors=ADAPTATION)
    result = ClassifierMethod().select(request)
    assert result.ids.tolist() == [50, 51, 52, 53, 54]
    score = dict(zip(result.ids.tolist(), result.score))
    assert score[50] > score[51] == score[52] > score[53] > score[54]  # the blocked row scores highest
    assert result.ids[np.argsort(np.where(result.keep, result.rank, 99))][:budget].tolist() == kept
    reasons = dict(zip(result.ids.tolist(), result.reason))
    assert reasons[50] == f"rejected: {BLOCK}"
    for position, cid in enumerate(kept):
        assert reasons[cid] == (f"kept: classifier log-odds {score[cid]:.3f}, rank {position} of {budget} "
                                "(34 negatives, seed 3)")  # every unblocked row: fewer than 1000
    for cid in set(score) - set(kept) - {50}:
        assert reasons[cid].startswith(f"rejected: classifier log-odds {score[cid]:.3f} below the {budget} kept")


def test_target_draw_takes_only_target_like_rows_then_fills_by_score():
    score = np.array([0.5, -1.0, 2.0, 0.0, -0.2, 3.0])
    ids = np.array([10, 11, 12, 13, 14, 15])
    for seed in range(5):
        drawn = target_draw(score, ids, 3, seed)
        assert len(drawn) == 3 and set(drawn) <= {0, 2, 3, 5}  # only log-odds >= 0, ranked or not
    assert {tuple(sorted(target_draw(score, ids, 2, seed))) for seed in range(30)} != {(2, 5)}  # not the top 2
    assert target_draw(score, ids, 6, 0)[4:].tolist() == [4, 1]  # the shortfall by score, highest first
    assert set(target_draw(score, ids, 4, 0)) == {0, 2, 3, 5}
    assert target_draw(score, ids, 0, 0).tolist() == []
    shuffled = np.array([3, 0, 5, 1, 4, 2])  # the input order does not change the draw (by id)
    assert ids[shuffled][target_draw(score[shuffled], ids[shuffled], 3, 7)].tolist() == \
        ids[target_draw(score, ids, 3, 7)].tolist()
    assert target_draw(score, ids, 3, 7).tolist() == target_draw(score, ids, 3, 7).tolist()


def test_classifier_draw_target_keeps_only_target_like_unblocked_rows(tmp_path):
    store = _store(tmp_path)
    request = make_request(store, [54, 53, 52, 51, 50], {50: BLOCK}, budget=3, seed=3, vectors=ADAPTATION)
    result = get_method("classifier", draw="target").select(request)
    score = dict(zip(result.ids.tolist(), result.score))
    assert score[51] == score[52] > 0 > score[53] > score[54]  # two unblocked target-like rows, 50 blocked
    order = result.ids[np.argsort(np.where(result.keep, result.rank, 99))][:3].tolist()
    assert sorted(order[:2]) == [51, 52] and order[2] == 53  # the draw, then the shortfall by log-odds
    reasons = dict(zip(result.ids.tolist(), result.reason))
    assert reasons[50] == f"rejected: {BLOCK}"
    assert reasons[54] == (f"rejected: classifier log-odds {score[54]:.3f}, not drawn (a seeded draw of 2 of the 2 "
                           "rows with log-odds >= 0)")
    with pytest.raises(AlbatError, match="draw"):
        get_method("classifier", draw="best").select(request)


def test_classifier_budget_above_unblocked_candidates_raises(tmp_path):
    request = make_request(_store(tmp_path), [54, 53, 52, 51, 50], {50: BLOCK}, budget=5, vectors=ADAPTATION)
    with pytest.raises(AlbatError, match="budget 5 exceeds the 4 selectable rows of the candidate pool"):
        ClassifierMethod().select(request)


def test_negatives_are_seeded_and_never_blocked(tmp_path):
    store = _store(tmp_path)
    blocked = np.array([50, 51, 1])
    everything = sample_negatives(store, blocked, n_adaptation=4, requested=0, seed=0)
    assert len(everything) == 32  # the default (1000) capped by the 35 - 3 unblocked rows
    on_x = np.isclose(everything, [1.0, 0.0]).all(1)
    assert not on_x.any()  # row 50, the only one on +x, is blocked
    a, b, c = (sample_negatives(store, blocked, 4, requested=5, seed=s) for s in (7, 7, 8))
    assert a.shape == (5, 2) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_classifier_is_deterministic_under_the_seed_and_reads_string_options(tmp_path):
    store = _store(tmp_path)

    def scores(seed, **options):
        request = make_request(store, [54, 53, 52, 51], {50: BLOCK}, budget=2, seed=seed, vectors=ADAPTATION)
        return get_method("classifier", **options).select(request).score

    assert np.array_equal(scores(1, negatives="6", C="0.5"), scores(1, negatives="6", C="0.5"))
    assert not np.allclose(scores(1, negatives="6"), scores(2, negatives="6"))  # another negative sample
    assert not np.allclose(scores(1, negatives="6", C="0.5"), scores(1, negatives="6", C="5"))


def test_classifier_option_and_input_errors(tmp_path):
    store = _store(tmp_path)
    request = make_request(store, [51], {}, budget=1, vectors=ADAPTATION)
    with pytest.raises(AlbatError, match='C = "strong": not a number'):
        get_method("classifier", C="strong").select(request)
    with pytest.raises(AlbatError, match="negatives = -1: too small; give an integer >= 0"):
        get_method("classifier", negatives=-1).select(request)
    with pytest.raises(AlbatError, match="C = 0: too small; give a finite number > 0"):
        get_method("classifier", C=0)
    with pytest.raises(AlbatError, match="adaptation set is empty"):
        ClassifierMethod().select(make_request(store, [51], {}, budget=1))


def test_corpus_keys_by_hand():
    from albat.pipeline.methods.classifier import TARGET_KEY, corpus_keys

    score, noise = np.array([0.5, -1.0, 0.0, -0.2]), np.array([0.3, 0.9, 0.1, 0.5])
    assert corpus_keys(score, noise, "top").tolist() == score.tolist()
    assert corpus_keys(score, noise, "target").tolist() == [TARGET_KEY + 0.3, -1.0, TARGET_KEY + 0.1, -0.2]


@pytest.mark.parametrize("draw", ["top", "target"])
def test_classifier_corpus_pool_equals_scoring_every_row(tmp_path, draw):
    """pool=corpus keeps what ranking every unblocked store row by the same model does (brute force),
    may keep rows outside the candidates, never a blocked one, and gives every candidate a reason."""
    from albat.pipeline.methods.classifier import corpus_keys

    store = _store(tmp_path)
    blocked = {50: BLOCK, 3: BLOCK}
    request = make_request(store, [54, 53, 50], blocked, budget=4, seed=5, vectors=ADAPTATION)
    result = get_method("classifier", pool="corpus", draw=draw).select(request)
    model = fit_classifier(ADAPTATION, sample_negatives(store, request.blocked_ids, 4, 0, 5), 1.0, 5)
    ids = store.all_ids()
    score = log_odds(model, store.vectors_for_ids(ids))
    noise = np.concatenate([np.random.default_rng([5, 12, s]).random(n)
                            for s, n in zip(store.shard_indices(), store.row_counts())])
    key = corpus_keys(score, noise, draw)
    key[np.isin(ids, [50, 3])] = -np.inf
    expected = ids[np.lexsort((ids, -key))][:4]
    kept = result.ids[result.keep][np.argsort(result.rank[result.keep])]
    assert kept.tolist() == expected.tolist() and not set(kept) & {50, 3}
    assert set(result.ids) == set(kept) | {54, 53, 50}  # kept rows, then every candidate
    by_id = dict(zip(result.ids.tolist(), result.score))
    assert np.allclose([by_id[i] for i in kept], score[np.searchsorted(ids, kept)], atol=1e-9)
    reasons = dict(zip(result.ids.tolist(), result.reason))
    assert reasons[50] == f"rejected: {BLOCK}" and "over the corpus" in reasons[int(kept[0])]
    assert len(set(kept) - {54, 53}) >= 2  # two selectable candidates, a budget of 4: the corpus fills it
    if draw == "top":
        assert kept[:2].tolist() == [51, 52]  # the most target-like rows, not candidates here
    else:
        assert (score[np.searchsorted(ids, kept[:2])] >= 0).all()


def test_classifier_corpus_pool_does_not_depend_on_shard_size(tmp_path):
    angles = np.radians(np.linspace(0, 350, 36))
    vectors = np.stack([np.cos(angles), np.sin(angles)], 1)
    ids = list(range(100, 136))
    picks = []
    for rows in (5, 36):
        store = make_store(tmp_path / f"s{rows}", ids, [""] * 36, vectors, shard_rows=rows)
        request = make_request(store, [100, 101], {}, budget=6, seed=2, vectors=ADAPTATION)
        result = get_method("classifier", pool="corpus").select(request)
        picks.append(sorted(result.ids[result.keep].tolist()))
    assert picks[0] == picks[1] and len(picks[0]) == 6


def test_classifier_corpus_pool_budget_counts_the_whole_corpus(tmp_path):
    request = make_request(_store(tmp_path), [54], {50: BLOCK}, budget=35, vectors=ADAPTATION)
    with pytest.raises(AlbatError, match="budget 35 exceeds the 34 selectable rows of the corpus"):
        get_method("classifier", pool="corpus").select(request)
    with pytest.raises(AlbatError, match="pool"):
        get_method("classifier", pool="everything")


def test_spread_picks_by_hand():
    """Rows best first a=(1,0), b=(.96,.28), c=(0,1), d=(.6,.8): a; then the least summed cosine to
    {a}: c (0 against b .96, d .6); then to {a, c}: b (.96 + .28 = 1.24) before d (.6 + .8 = 1.4)."""
    from albat.pipeline.methods.classifier import spread_picks

    rows = np.array([[1.0, 0.0], [0.96, 0.28], [0.0, 1.0], [0.6, 0.8]])
    picks, cost = spread_picks(rows, 3)
    assert picks.tolist() == [0, 2, 1] and np.allclose(cost, [0.0, 0.0, 1.24])
    assert spread_picks(rows, 9)[0].tolist() == [0, 2, 1, 3]  # more than there are: every row
    assert spread_picks(rows, 0)[0].tolist() == []
    twins = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert spread_picks(twins, 2)[0].tolist() == [0, 1]  # a tie goes to the earlier, better row


def test_spread_picks_equal_a_plain_loop_on_random_rows():
    from albat.pipeline.methods.classifier import spread_picks

    rows = np.random.default_rng(4).normal(size=(40, 6))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    picked = [0]
    while len(picked) < 12:
        rest = [j for j in range(40) if j not in picked]
        picked.append(min(rest, key=lambda j: (sum(rows[j] @ rows[i] for i in picked), j)))
    assert spread_picks(rows, 12)[0].tolist() == picked


def test_ngram_features_are_dsir_counts_at_unit_length():
    from albat.pipeline.methods.classifier import ngram_features
    from albat.pipeline.methods.dsir import hashed_ngram_counts

    texts = ["the cat sat", "", "the the cat"]
    rows = ngram_features(texts, 64).toarray()
    counts = hashed_ngram_counts(texts, 64).toarray()
    assert np.allclose(np.linalg.norm(rows, axis=1), [1.0, 0.0, 1.0])
    assert np.allclose(rows[0], counts[0] / np.linalg.norm(counts[0]))
    assert np.allclose(rows[2], counts[2] / np.linalg.norm(counts[2]))


def _wording_store(tmp_path):
    """Vectors that say nothing (seeded noise); 40 backbone texts about the weather, and candidates 51,
    52 worded like the adaptation set (compiler terms), 53, 54 about the weather."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(44, 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    weather = [f"rain and wind over the hills on day {i}" for i in range(40)]
    texts = weather + ["a compiler turns source code into machine code", "the compiler optimises source code",
                       "sun over the hills", "wind and rain today"]
    ids = list(range(1, 41)) + [51, 52, 53, 54]
    adaptation = ["source code and its compiler", "machine code from a compiler", "compiler errors in source code"]
    positives = rng.normal(size=(3, 8))
    positives /= np.linalg.norm(positives, axis=1, keepdims=True)
    return make_store(tmp_path / "w", ids, texts, vectors, shard_rows=16), adaptation, positives.astype(np.float32)


@pytest.mark.parametrize("features", ["ngrams", "both"])
def test_ngram_features_find_the_target_wording(tmp_path, features):
    store, texts, vectors = _wording_store(tmp_path)
    request = make_request(store, [51, 52, 53, 54], {}, budget=2, seed=1, texts=texts, vectors=vectors)
    result = get_method("classifier", features=features, buckets="4096").select(request)
    assert sorted(result.ids[result.keep].tolist()) == [51, 52]
    assert all(f"features {features}" in r for r, k in zip(result.reason, result.keep) if k)


@pytest.mark.parametrize("features", ["ngrams", "both"])
def test_ngram_corpus_pool_equals_scoring_every_row(tmp_path, features):
    """pool=corpus with n-gram features ranks every row as one pass of the same model over all of them."""
    from albat.pipeline.methods.classifier import feature_rows, negative_positions

    store, texts, vectors = _wording_store(tmp_path)
    request = make_request(store, [53, 54], {}, budget=3, seed=2, texts=texts, vectors=vectors)
    result = get_method("classifier", features=features, pool="corpus", buckets="512").select(request)
    negatives = negative_positions(store, request.blocked_ids, 3, 0, 2)
    ids = store.all_ids()
    model = fit_classifier(feature_rows(vectors, texts, features, 512),
                           feature_rows(store.vectors_at(negatives), store.texts_for_ids(store.ids_at(negatives)),
                                        features, 512), 1.0, 2)
    score = log_odds(model, feature_rows(store.vectors_for_ids(ids), store.texts_for_ids(ids), features, 512))
    kept = result.ids[result.keep][np.argsort(result.rank[result.keep])]
    assert kept.tolist() == ids[np.lexsort((ids, -score))][:3].tolist()
    assert sorted(kept[:2].tolist()) == [51, 52]  # the two rows worded like the target, though not candidates


def test_spread_keeps_the_spread_picks_of_the_top_rows(tmp_path):
    """spread=2 keeps spread_picks of the 2·budget best candidates by log-odds, on both pools, and says why."""
    from albat.pipeline.methods.classifier import spread_picks

    angles = np.radians(np.sort(np.random.default_rng(1).uniform(-80, 80, 33)))  # no two rows tie by angle
    vectors = np.stack([np.cos(angles), np.sin(angles)], 1)
    ids = list(range(200, 233))
    store = make_store(tmp_path / "fan", ids, [""] * 33, vectors, shard_rows=7)
    request = make_request(store, ids, {}, budget=4, seed=0, vectors=ADAPTATION)
    top = get_method("classifier").select(request)
    order = top.ids[top.keep][np.argsort(top.rank[top.keep])]
    ranked = top.ids[np.lexsort((top.ids, -top.score))][:8]
    picks, _ = spread_picks(store.vectors_for_ids(ranked), 4)
    for pool in ("candidates", "corpus"):
        result = get_method("classifier", spread="2", pool=pool).select(request)
        kept = result.ids[result.keep][np.argsort(result.rank[result.keep])]
        assert kept.tolist() == ranked[picks].tolist() != order.tolist()
        reasons = dict(zip(result.ids.tolist(), result.reason))
        assert "summed cosine" in reasons[int(kept[1])] and "(spread 2)" in reasons[int(kept[1])]
        skipped = next(int(i) for i in ranked if i not in kept)
        assert "more alike to the picks than those kept (spread 2)" in reasons[skipped]
        below = next(int(i) for i in ids if i not in ranked)
        assert "more alike" not in reasons[below]


def test_spread_pool_by_hand():
    from albat.pipeline.methods.classifier import spread_pool

    score = np.array([2.0, 1.0, 0.5, 0.0, -0.5, -1.0])
    assert spread_pool(score, 2, 0.0) == 4  # 0.0 is at the floor: it passes
    assert spread_pool(score, 2, 0.75) == 2  # one above the floor, but never fewer than the budget
    assert spread_pool(score, 5, 0.75) == 5
    assert spread_pool(score, 2, float("-inf")) == 6
    assert spread_pool(score, 9, float("-inf")) == 6  # never more rows than there are
    assert spread_pool(score[:0], 3, 0.0) == 0


def test_spread_floor_spreads_only_over_rows_at_or_above_it(tmp_path):
    """spread_floor cuts the 2·budget surest rows to those with log-odds >= the floor (never fewer than the
    budget) before the spread picks, on both pools; a row cut off by it says so."""
    from albat.pipeline.methods.classifier import spread_picks

    angles = np.radians(np.sort(np.random.default_rng(1).uniform(-80, 80, 33)))
    vectors = np.stack([np.cos(angles), np.sin(angles)], 1)
    ids = list(range(200, 233))
    store = make_store(tmp_path / "fan", ids, [""] * 33, vectors, shard_rows=7)
    request = make_request(store, ids, {}, budget=4, seed=0, vectors=ADAPTATION)
    top = get_method("classifier").select(request)
    order = np.lexsort((top.ids, -top.score))
    ranked, ranked_score = top.ids[order][:8], top.score[order][:8]
    floor = float(ranked_score[5])  # six rows at or above it
    picks, _ = spread_picks(store.vectors_for_ids(ranked[:6]), 4)
    assert sorted(picks.tolist()) != [0, 1, 2, 3]  # the floor leaves something to choose
    for pool in ("candidates", "corpus"):
        result = get_method("classifier", spread="2", spread_floor=str(floor), pool=pool).select(request)
        kept = result.ids[result.keep][np.argsort(result.rank[result.keep])]
        assert kept.tolist() == ranked[:6][picks].tolist()
        reasons = dict(zip(result.ids.tolist(), result.reason))
        assert "among the 6 highest" in reasons[next(int(i) for i in ranked[:6] if i not in kept)]
        if pool == "candidates":
            assert "below the spread floor" in reasons[int(ranked[6])]
        high = get_method("classifier", spread="2", spread_floor=str(ranked_score[0] + 1), pool=pool).select(request)
        assert set(high.ids[high.keep].tolist()) == set(ranked[:4].tolist())  # none pass: the budget's top rows
        off = get_method("classifier", spread="2", spread_floor="-inf", pool=pool).select(request)
        plain = get_method("classifier", spread="2", pool=pool).select(request)
        assert sorted(off.ids[off.keep].tolist()) == sorted(plain.ids[plain.keep].tolist())


def test_spread_and_ngram_errors(tmp_path):
    store = _store(tmp_path)
    request = make_request(store, [51], {}, budget=1, vectors=ADAPTATION)
    with pytest.raises(AlbatError, match="spread=2 works with draw=top only"):
        get_method("classifier", spread=2, draw="target").select(request)
    with pytest.raises(AlbatError, match="spread = 0: too small"):
        get_method("classifier", spread=0)
    with pytest.raises(AlbatError, match="spread_floor=0 bounds the spread picks; set spread to 2 or more"):
        get_method("classifier", spread_floor=0).select(request)
    with pytest.raises(AlbatError, match="features"):
        get_method("classifier", features="words")
    info = dict(store.info)
    info.pop("text_column")
    store.write_info(info)
    with pytest.raises(AlbatError, match="features=ngrams reads texts, and this store has no text column"):
        get_method("classifier", features="ngrams").select(request)
