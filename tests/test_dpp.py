"""albat objective=dpp: the greedy's gains against direct log-determinants, its picks against brute force."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from albat.pipeline.methods.dpp import greedy_map, log_det, quality


def unit(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_quality_by_hand():
    assert quality(np.array([0.9, 0.7]), 0.1).tolist() == pytest.approx([1.0, np.exp(-1.0)])


@pytest.mark.parametrize("seed", range(6))
def test_each_pick_is_the_argmax_of_the_exact_log_det_gain(seed):
    rng = np.random.default_rng(seed)
    x, q = unit(rng, 10, 4), quality(rng.uniform(0.3, 0.9, 10), 0.1)
    allowed = rng.uniform(size=10) > 0.2
    trace = greedy_map(x, q, 5, allowed=allowed)
    chosen: list[int] = []
    for b in trace.order:
        gains = {c: log_det(x, q, chosen + [c]) - log_det(x, q, chosen) for c in range(10) if allowed[c] and c not in chosen}
        best = max(gains.values())
        assert gains[int(b)] == pytest.approx(best, abs=1e-8)
        assert trace.gain[b] == pytest.approx(gains[int(b)], abs=1e-8)
        chosen.append(int(b))
    assert not np.isin(trace.order, np.flatnonzero(~allowed)).any()


def test_a_duplicate_is_never_worth_its_twin():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    trace = greedy_map(x, np.array([1.0, 1.0, 0.9]), 2)
    assert trace.order.tolist() == [0, 2]  # the twin of row 0 adds only ε's volume; row 2 a whole direction
    assert trace.last_gain[1] < np.log(0.01)


def test_greedy_is_close_to_the_best_set_on_small_cases():
    for seed in range(4):
        rng = np.random.default_rng(50 + seed)
        x, q = unit(rng, 8, 3), quality(rng.uniform(0.3, 0.9, 8), 0.2)
        trace = greedy_map(x, q, 3)
        best = max(log_det(x, q, list(s)) for s in itertools.combinations(range(8), 3))
        assert log_det(x, q, trace.order) <= best + 1e-9
        assert log_det(x, q, trace.order) >= best - 1.0  # the greedy is near, not always at, the MAP
