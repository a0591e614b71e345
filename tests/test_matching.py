"""Distribution matching (albat objective=match): the transport plan against a linear program, the KDE,
and the seeded draw."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

from albat.pipeline.methods.matching import (draw, kde_counts, plan_value, row_probabilities, transport_plan)


def lp_optimum(query, row, distance, kde, alpha):
    """min (α/C)·Σ γ d + (1 − α)·M·t  s.t.  Σ_b γ_jb = 1/M,  γ_jb·κ_b ≤ t,  γ ≥ 0  (variables γ, t)."""
    examples = np.unique(query)
    M, n = len(examples), len(row)
    scale = np.mean([distance[query == j].max() for j in examples])
    c = np.r_[alpha / scale * distance, (1 - alpha) * M]
    a_eq = np.zeros((M, n + 1))
    for i, j in enumerate(examples):
        a_eq[i, :n] = query == j
    a_ub = np.zeros((n, n + 1))
    a_ub[np.arange(n), np.arange(n)] = kde[row]
    a_ub[:, n] = -1
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(n), A_eq=a_eq, b_eq=np.full(M, 1 / M), bounds=(0, None),
                  method="highs")
    assert res.status == 0
    return res.fun


def random_case(seed, examples=4, per=5, rows=12):
    rng = np.random.default_rng(seed)
    query = np.repeat(np.arange(examples), per)
    row = np.concatenate([rng.choice(rows, per, replace=False) for _ in range(examples)])
    distance = rng.uniform(0.2, 1.2, len(row))
    kde = rng.uniform(1.0, 4.0, rows)
    return query, row, distance, kde


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.5, 0.8, 0.99])
def test_the_sweep_finds_the_linear_programs_optimum(seed, alpha):
    query, row, distance, kde = random_case(seed)
    plan = transport_plan(query, row, distance, kde, alpha)
    for j in range(4):
        assert plan.mass[query == j].sum() == pytest.approx(0.25)
    assert (plan.mass >= 0).all()
    assert plan_value(query, row, distance, kde, plan.mass, alpha) == pytest.approx(
        lp_optimum(query, row, distance, kde, alpha), rel=1e-7, abs=1e-9)


def test_alpha_one_sends_every_example_to_its_nearest_neighbour():
    query, row, distance, kde = random_case(3)
    plan = transport_plan(query, row, distance, np.ones_like(kde), 1.0)
    for j in range(4):
        pairs = np.flatnonzero(query == j)
        assert plan.mass[pairs[np.argmin(distance[pairs])]] == pytest.approx(0.25)


def test_by_hand_a_crowded_row_carries_less():
    # one example, two neighbours at distances 0.2 and 0.4; the nearer has three near-duplicates (κ = 3)
    query, row = np.array([0, 0]), np.array([0, 1])
    distance, kde = np.array([0.2, 0.4]), np.array([3.0, 1.0])
    # α = 0: only the max term counts; the cap t must hold γ_0·3 ≤ t, γ_1 ≤ t, γ_0 + γ_1 = 1 → t = 3/4
    plan = transport_plan(query, row, distance, kde, 0.0)
    assert plan.mass.tolist() == pytest.approx([0.25, 0.75])
    # without the density penalty the same α spreads evenly
    assert transport_plan(query, row, distance, np.ones(2), 0.0).mass.tolist() == pytest.approx([0.5, 0.5])


def test_row_probabilities_add_the_mass_of_every_example_and_sum_to_one():
    query, row, distance, kde = random_case(5)
    plan = transport_plan(query, row, distance, kde, 0.5)
    p = row_probabilities(plan, 12)
    assert p.sum() == pytest.approx(1.0)
    assert p[row[0]] == pytest.approx(plan.mass[row == row[0]].sum())


def test_kde_counts_by_hand():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # ‖x0 − x1‖² = 0, ‖x0 − x2‖² = 2; σ² = 4: κ0 = 1 + 1 + (1 − 2/4) = 2.5
    assert kde_counts(x, 2.0).tolist() == pytest.approx([2.5, 2.5, 2.0])
    assert kde_counts(x, 0.5).tolist() == pytest.approx([2.0, 2.0, 1.0])
    assert kde_counts(x, 0.0).tolist() == [1.0, 1.0, 1.0]


def test_draw_is_seeded_follows_the_probabilities_and_fills_the_budget():
    p = np.array([0.7, 0.2, 0.1, 0.0, 0.0])
    assert draw(p, 3, seed=1).tolist() == draw(p, 3, seed=1).tolist()
    assert set(draw(p, 3, seed=1).tolist()) == {0, 1, 2}  # rows with mass come before rows without
    assert len(set(draw(p, 5, seed=2).tolist())) == 5
    counts = np.zeros(5)
    for seed in range(400):
        counts[draw(p, 1, seed=seed)] += 1
    assert counts[0] > counts[1] > counts[2] and counts[3] == counts[4] == 0
    assert counts[0] / 400 == pytest.approx(0.7, abs=0.08)
    allowed = np.array([False, True, True, True, True])
    assert 0 not in draw(p, 4, seed=3, allowed=allowed).tolist()
