"""Facility location (albat objective=facility): weights, the sparse graph and the lazy greedy, by hand
and against brute force."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from albat.pipeline.methods.facility import (example_mass_weights, facility_location, facility_value, neighbour_graph,
                                             target_weights)


def unit(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_target_weights_by_hand():
    w = target_weights(np.array([0.9, 0.8, 0.5]), 0.1)
    assert w == pytest.approx([1.0, np.exp(-1.0), np.exp(-4.0)])
    assert target_weights(np.array([0.3, 0.9]), float("inf")).tolist() == [1.0, 1.0]


def test_neighbour_graph_keeps_the_most_similar_rows_clipped_at_zero():
    x = np.array([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0]])
    idx, sim = neighbour_graph(x, 2)
    assert idx.tolist() == [[0, 1], [1, 0], [2, 1]]
    assert sim[0].tolist() == pytest.approx([1.0, 0.8])
    assert sim[2].tolist() == pytest.approx([1.0, 0.0])  # cos(-x, (0.8, 0.6)) = -0.8, clipped
    idx_b, sim_b = neighbour_graph(x, 2, block=1)  # blocks change nothing
    assert idx_b.tolist() == idx.tolist() and np.allclose(sim_b, sim)


def test_by_hand_a_duplicate_adds_nothing_once_its_twin_is_chosen():
    # rows 0 and 1 are the same point, row 2 another; each covers itself (and its twin) fully
    idx = np.array([[0, 1], [1, 0], [2, 0]])
    sim = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    w = np.array([1.0, 1.0, 0.5])
    trace = facility_location(idx, sim, w, 2)
    assert trace.order.tolist() == [0, 2]  # 0 covers {0, 1}: gain 2; then 1 adds 0, 2 adds 0.5
    assert trace.gain[0] == pytest.approx(2.0) and trace.gain[2] == pytest.approx(0.5)
    assert trace.last_gain[1] == pytest.approx(0.0)
    assert trace.value == pytest.approx(facility_value(idx, sim, w, trace.order))


def dense_greedy(idx, sim, w, budget, allowed):
    """The plain greedy: argmax of the exact marginal gain F(S ∪ b) − F(S), ties to the lower index."""
    chosen: list[int] = []
    gains = []
    for _ in range(budget):
        base = facility_value(idx, sim, w, chosen)
        best, best_gain = -1, -np.inf
        for b in range(len(idx)):
            if not allowed[b] or b in chosen:
                continue
            gain = facility_value(idx, sim, w, chosen + [b]) - base
            if gain > best_gain + 1e-12:
                best, best_gain = b, gain
        if best < 0:
            break
        chosen.append(best)
        gains.append(best_gain)
    return chosen, gains


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [3, 12])
def test_lazy_greedy_equals_the_plain_greedy_and_its_gains_are_exact(seed, k):
    rng = np.random.default_rng(seed)
    x = unit(rng, 12, 4)
    idx, sim = neighbour_graph(x, k)
    w = target_weights(rng.uniform(0.2, 0.9, 12), 0.2)
    allowed = rng.uniform(size=12) > 0.2
    trace = facility_location(idx, sim, w, 5, allowed)
    chosen, gains = dense_greedy(idx, sim, w, 5, allowed)
    assert trace.order.tolist() == chosen
    assert trace.gain[trace.order] == pytest.approx(gains)
    assert trace.value == pytest.approx(facility_value(idx, sim, w, trace.order))
    assert not np.isin(trace.order, np.flatnonzero(~allowed)).any()


@pytest.mark.parametrize("seed", range(4))
def test_greedy_is_within_one_minus_one_over_e_of_the_best_set(seed):
    rng = np.random.default_rng(100 + seed)
    x = unit(rng, 9, 3)
    idx, sim = neighbour_graph(x, 9)
    w = rng.uniform(0.1, 1.0, 9)
    trace = facility_location(idx, sim, w, 3)
    best = max(facility_value(idx, sim, w, list(s)) for s in itertools.combinations(range(9), 3))
    assert trace.value >= (1 - 1 / np.e) * best - 1e-12
    assert trace.value <= best + 1e-12


def test_budget_beyond_the_allowed_rows_stops_there():
    rng = np.random.default_rng(3)
    idx, sim = neighbour_graph(unit(rng, 6, 3), 6)
    allowed = np.array([True, False, True, False, False, False])
    assert sorted(facility_location(idx, sim, np.ones(6), 5, allowed).order.tolist()) == [0, 2]


def test_every_adaptation_example_spreads_one_unit_of_mass():
    cos = np.array([[0.9, 0.1], [0.5, 0.2], [0.1, 0.3]])
    w = example_mass_weights(cos, 0.1)
    col0 = np.exp((cos[:, 0] - 0.9) / 0.1) / np.exp((cos[:, 0] - 0.9) / 0.1).sum()
    col1 = np.exp((cos[:, 1] - 0.3) / 0.1) / np.exp((cos[:, 1] - 0.3) / 0.1).sum()
    assert w == pytest.approx(col0 + col1)
    assert w.sum() == pytest.approx(2.0)
    assert example_mass_weights(cos, float("inf")) == pytest.approx([2 / 3] * 3)
