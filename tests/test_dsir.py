"""DSIR: hashed n-gram features, smoothed log importance weights, Gumbel top-k draws, both pools."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from method_fixtures import make_request, make_store
from scipy import sparse

from albat.pipeline.methods.base import get_method
from albat.pipeline.methods.dsir import (DsirMethod, _Draw, gumbel_keys, gumbel_top_k, hashed_ngram_counts, log_importance,
                                  log_ratio, ngrams, top_k)
from albat.stores.errors import AlbatError

B = 10_000


def bucket(feature: str) -> int:
    return zlib.crc32(feature.encode("utf-8")) % B


# ----- features ---------------------------------------------------------------------------------
def test_ngrams_are_lowercased_unigrams_then_bigrams():
    assert ngrams("The cat, the HAT!") == ["the", "cat", "the", "hat", "the cat", "cat the", "the hat"]
    assert ngrams("") == [] and ngrams("one") == ["one"]


def test_hashed_ngram_counts_by_hand():
    counts = hashed_ngram_counts(["a b a", "", "B", None], B)
    assert counts.shape == (4, B)
    dense = counts.toarray()
    # "a b a": a, b, a, "a b", "b a" -> 5 features, 4 distinct bins (no collision among these four)
    assert len({bucket(f) for f in ("a", "b", "a b", "b a")}) == 4
    assert dense[0].sum() == 5 and dense[0, bucket("a")] == 2 and dense[0, bucket("b")] == 1
    assert dense[0, bucket("a b")] == 1 and dense[0, bucket("b a")] == 1
    assert dense[1].sum() == 0 and dense[3].sum() == 0  # empty and missing texts have no features
    assert dense[2].sum() == 1 and dense[2, bucket("b")] == 1  # "B" lowercased


def test_hash_is_stable_across_processes():
    # a pinned value: Python's salted hash() would move this bin on every run
    assert sparse.find(hashed_ngram_counts(["apple"], B))[1].tolist() == [7488]
    assert sparse.find(hashed_ngram_counts(["apple"], 7))[1].tolist() == [zlib.crc32(b"apple") % 7]


def test_log_ratio_by_hand():
    # alpha 1: p_T = [4/6, 2/6], p_R = [2/6, 4/6]
    assert np.allclose(log_ratio(np.array([3, 1]), np.array([1, 3]), 1.0), [math.log(2), -math.log(2)])
    # alpha 0.5: p_T = [3.5/5, 1.5/5], p_R = [1.5/5, 3.5/5]
    assert np.allclose(log_ratio(np.array([3, 1]), np.array([1, 3]), 0.5), [math.log(7 / 3), math.log(3 / 7)])
    # an unseen bin in both: ratio log((a/(n_T + a B)) / (a/(n_R + a B)))
    assert np.allclose(log_ratio(np.array([4, 0]), np.array([0, 0]), 1.0)[1], math.log((1 / 6) / (1 / 2)))


def test_log_importance_sums_over_features():
    counts = sparse.csr_matrix(np.array([[2, 1], [0, 0], [0, 3]]))
    assert np.allclose(log_importance(counts, np.array([math.log(2), -math.log(2)])),
                       [math.log(2), 0.0, -3 * math.log(2)])


# ----- Gumbel top-k -------------------------------------------------------------------------------
def test_gumbel_top_k_is_seeded_distinct_and_skips_zero_weights():
    log_w = np.array([0.0, -np.inf, 1.0, 2.0, -np.inf, 0.5])
    a = gumbel_top_k(log_w, 4, seed=3)
    assert a.tolist() == gumbel_top_k(log_w, 4, seed=3).tolist()
    assert sorted(a.tolist()) == [0, 2, 3, 5]  # every positive-weight row, no zero-weight one
    draws = {tuple(gumbel_top_k(log_w, 2, seed=s).tolist()) for s in range(30)}
    assert len(draws) > 3  # the seed matters


def test_gumbel_top_k_samples_in_proportion_to_weights():
    # weights 1, 2, 3, 4 (total 10): P(first draw = 3) = 0.4; P(draws 3 then 2) = 0.4 * 3/6 = 0.2;
    # P(draws 0 then 1) = 0.1 * 2/9
    log_w = np.log([1.0, 2.0, 3.0, 4.0])
    n = 8_000
    draws = [tuple(gumbel_top_k(log_w, 2, seed=s).tolist()) for s in range(n)]
    first = np.bincount([d[0] for d in draws], minlength=4) / n
    assert np.allclose(first, [0.1, 0.2, 0.3, 0.4], atol=0.02), first
    assert draws.count((3, 2)) / n == pytest.approx(0.2, abs=0.02)
    assert draws.count((0, 1)) / n == pytest.approx(0.1 * 2 / 9, abs=0.01)


# ----- the method ----------------------------------------------------------------------------------
BLOCK = "exact duplicate of exclude example 0"


def test_dsir_candidate_pool_by_hand(tmp_path):
    store = make_store(tmp_path / "s", [1, 2, 3, 4], ["x", "y", "x", "z"], np.zeros((4, 2)), shard_rows=3)
    request = make_request(store, [1, 2, 3], blocked={3: BLOCK}, budget=1, seed=5, texts=["x"])
    assert bucket("x") != bucket("y")
    result = DsirMethod(pool="candidates", alpha="0.5", buckets="10000").select(request)  # strings, as from the CLI
    # target: x once; raw (the 3 candidates, blocked included): x twice, y once; alpha 0.5 over 10,000 bins
    lw_x = math.log((1.5 / 5001) / (2.5 / 5003))
    lw_y = math.log((0.5 / 5001) / (1.5 / 5003))
    by_id = {int(i): (s, k, r) for i, s, k, r in zip(result.ids, result.score, result.keep, result.reason)}
    assert sorted(by_id) == [1, 2, 3]  # the candidates; store row 4 is outside the pool
    assert np.allclose([by_id[1][0], by_id[2][0], by_id[3][0]], [lw_x, lw_y, lw_x])
    # the candidates are rows 0..2 of store shard 0: their noise is that shard's generator [seed, 0]
    drawn = [1, 2, 3][top_k(np.array([lw_x, lw_y, -np.inf]) + gumbel_keys(5, 0, 3), 1)[0]]
    assert result.ids[result.keep].tolist() == [drawn]
    assert by_id[drawn][2].startswith("kept: importance draw 0 of 1 from the candidates") and "seed 5" in by_id[drawn][2]
    assert by_id[3][1:] == (False, f"rejected: {BLOCK}")
    assert result.extra["dsir_key"][result.ids.tolist().index(3)] == -np.inf
    with pytest.raises(AlbatError, match="budget 3 exceeds the 2 selectable rows"):
        DsirMethod(pool="candidates").select(make_request(store, [1, 2, 3], {3: BLOCK}, budget=3, texts=["x"]))


APPLE = ["apple banana cherry", "banana apple", "cherry apple pie", "apple apple", "apple cherry banana"]
ENGINE = ["engine piston valve", "valve timing", "piston engine oil", "oil filter", "engine timing belt"]


def _corpus_store(tmp_path):
    texts = [t for pair in zip(APPLE, ENGINE) for t in pair]  # apple, engine, apple, engine, ...
    ids = [100 + 7 * i for i in range(len(texts))]
    return make_store(tmp_path / "s", ids, texts, np.zeros((len(texts), 2)), shard_rows=3), ids, texts


def test_dsir_corpus_pool_streams_shards_and_matches_a_one_shot_draw(tmp_path):
    store, ids, texts = _corpus_store(tmp_path)
    target = ["apple banana", "cherry pie apple"]
    blocked = {ids[0]: BLOCK, ids[5]: BLOCK}
    candidates = [ids[1], ids[2], ids[5]]
    for seed in range(5):
        result = DsirMethod().select(make_request(store, candidates, blocked, budget=3, seed=seed, texts=target))
        # the same computation done at once over the whole corpus (4 shards of 3, 3, 3, 1 rows)
        ratio = log_ratio(hashed_ngram_counts(target, B).sum(axis=0), hashed_ngram_counts(texts, B).sum(axis=0), 1.0)
        log_w = log_importance(hashed_ngram_counts(texts, B), ratio)
        masked = np.where(np.isin(ids, list(blocked)), -np.inf, log_w)
        noise = np.concatenate([gumbel_keys(seed, shard, n) for shard, n in enumerate([3, 3, 3, 1])])
        expected = [ids[i] for i in top_k(masked + noise, 3)]
        kept_order = result.ids[np.argsort(np.where(result.keep, result.rank, 99))][:3]
        assert kept_order.tolist() == expected
        assert set(result.ids.tolist()) == set(expected) | set(candidates)  # kept rows plus every candidate
        weights = dict(zip(ids, log_w))
        assert np.allclose(result.score, [weights[int(i)] for i in result.ids])
        assert not set(result.ids[result.keep].tolist()) & set(blocked)
        assert all(r.startswith("kept: importance draw") == k for r, k in zip(result.reason, result.keep))


def test_dsir_keys_do_not_depend_on_the_shard_order_or_the_pool(tmp_path):
    store, ids, texts = _corpus_store(tmp_path)
    log_w = np.linspace(-1, 1, len(ids))
    shards = [(s, np.arange(3 * s, min(3 * s + 3, len(ids)))) for s in range(4)]

    def draw(order):
        d = _Draw(4, np.asarray(ids, np.int64))
        for shard, rows in order:
            d.add(np.asarray(ids)[rows], log_w[rows], gumbel_keys(9, shard, len(rows)), np.empty(0, np.int64))
        return d

    forward, backward = draw(shards), draw(shards[::-1])
    assert forward.ids.tolist() == backward.ids.tolist() and np.array_equal(forward.cand_key, backward.cand_key)
    target = ["apple banana"]
    corpus = DsirMethod().select(make_request(store, [ids[1], ids[7]], {}, budget=2, seed=9, texts=target))
    pool = DsirMethod(pool="candidates").select(make_request(store, [ids[1], ids[7]], {}, budget=1, seed=9, texts=target))
    noise = dict(zip(corpus.ids.tolist(), corpus.extra["dsir_key"] - corpus.score))
    pool_noise = dict(zip(pool.ids.tolist(), pool.extra["dsir_key"] - pool.score))
    assert noise[ids[1]] == pytest.approx(pool_noise[ids[1]]) and noise[ids[7]] == pytest.approx(pool_noise[ids[7]])


def test_dsir_prefers_target_like_texts(tmp_path):
    store, ids, texts = _corpus_store(tmp_path)
    apple_ids = {i for i, t in zip(ids, texts) if t in APPLE}
    target = APPLE * 3  # a target distribution made of the apple vocabulary
    kept = []
    for seed in range(10):
        result = DsirMethod().select(make_request(store, [ids[1]], {}, budget=3, seed=seed, texts=target))
        kept += result.ids[result.keep].tolist()
    assert sum(i in apple_ids for i in kept) / len(kept) > 0.9


def test_dsir_corpus_budget_above_the_corpus_raises(tmp_path):
    store, ids, _ = _corpus_store(tmp_path)
    with pytest.raises(AlbatError, match="budget 10 exceeds the 9 selectable rows of the corpus"):
        DsirMethod().select(make_request(store, [ids[1]], {ids[0]: BLOCK}, budget=10, texts=["apple"]))


def test_dsir_options_are_checked():
    request = make_request(None, [1], {}, budget=1)
    with pytest.raises(AlbatError, match='pool = "everything": not one of the choices; give one of corpus, candidates'):
        get_method("dsir", pool="everything").select(request)
    with pytest.raises(AlbatError, match=r"unknown key 'poool' \(known: alpha, buckets, pool\)"):
        get_method("dsir", poool="corpus").select(request)
    with pytest.raises(AlbatError, match='buckets = "many": not an integer'):
        get_method("dsir", buckets="many").select(request)
    with pytest.raises(AlbatError, match="alpha = 0.0: too small; give a finite number > 0"):
        get_method("dsir", alpha=0.0)
