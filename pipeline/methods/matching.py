"""Distribution matching with a near-duplicate penalty (ALBAT `objective=match`; TSDS, Liu et al. 2024).

The selection should be distributed like the target (Proposition 1: data drawn like the adaptation set
does not move its optimum) and should not spend its budget on near-duplicates (Proposition 2: a second
copy adds no new curvature). Both are one transport problem over the retrieved pairs. Each adaptation
example j (M of them) sends mass 1/M to its retrieved neighbours b at cost d_jb = ‖x_j − x_b‖ (unit
vectors); neighbour b has κ_b ≥ 1, its kernel density among the pool (how many near-duplicates it has,
itself included):

    κ_b = Σ_{c∈P} max(0, 1 − ‖x_b − x_c‖² / σ²)

and the plan γ minimises

    (α / C) · Σ_jb γ_jb d_jb  +  (1 − α) · M · max_jb γ_jb κ_b       subject to Σ_b γ_jb = 1/M, γ ≥ 0

(C: the mean over examples of their farthest retrieved neighbour's distance, so α means the same at any
scale). The max term caps the mass on any pair at t/κ_b, so a row with many near-duplicates can carry
only a share of it, and each example fills its nearest neighbours up to that cap before moving on: the
optimum is a water-filling over a level s = 1/(M·t), found exactly by sweeping the breakpoints (TSDS's
algorithm). α → 1 sends every example's mass to its nearest neighbour (knn's first round); α → 0 spreads
it as far as the lists go. The selection probability of a row is the mass it receives from all
examples, p_b = Σ_j γ_jb; the m rows are a seeded draw without replacement with these probabilities
(Gumbel top-m: distribution matching samples, it does not take the top). `transport_plan` is pure and is
tested against a linear program.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np


def kde_counts(vectors: np.ndarray, sigma: float, block: int = 2048) -> np.ndarray:
    """κ_b = Σ_c max(0, 1 − ‖x_b − x_c‖²/σ²) over the rows of `vectors` (unit vectors: ‖x_b − x_c‖² =
    2 − 2 x_b·x_c), blockwise; 1 for every row when σ = 0 (no penalty)."""
    x = np.asarray(vectors, np.float32)
    if sigma <= 0:
        return np.ones(len(x))
    out = np.empty(len(x))
    for start in range(0, len(x), block):
        d2 = np.maximum(2.0 - 2.0 * (x[start:start + block] @ x.T).astype(np.float64), 0.0)
        out[start:start + block] = np.clip(1.0 - d2 / sigma**2, 0.0, None).sum(axis=1)
    return np.maximum(out, 1.0)


@dataclass
class Plan:
    rows: np.ndarray  # (pairs,) the pool row of each pair
    mass: np.ndarray  # (pairs,) γ_jb
    level: float  # s: every filled pair carries 1/(M·s·κ_b)
    depth: np.ndarray  # (M,) neighbours each example sends mass to


def transport_plan(query: np.ndarray, row: np.ndarray, distance: np.ndarray, kde: np.ndarray,
                   alpha: float) -> Plan:
    """The optimal γ of the objective in the module docstring over pairs (query[i], row[i], distance[i]);
    kde[row] is κ. Pairs of one example are taken in order of distance (ties: the lower pair index).

    At a level s every pair can carry at most 1/(M·s·κ_b), and each example pours its 1/M into its
    nearest neighbours up to that cap. Raising s (lowering the cap t = 1/(M·s)) lowers the max term and
    pushes mass further out; the objective is convex and piecewise smooth in s with breakpoints where an
    example's filled neighbours' Σ 1/κ reaches s, and between them its slope has the sign of
    (α/C)·Σ_j (d_{j,next}·S_j − W_j) − (1 − α)·M (S_j, W_j: Σ 1/κ and Σ d/κ over j's filled
    neighbours). The sweep stops at the first breakpoint where that is ≥ 0, or where an example's whole
    list is at the cap (a lower cap would not hold its 1/M)."""
    query, row = np.asarray(query, np.int64), np.asarray(row, np.int64)
    distance, kde = np.asarray(distance, np.float64), np.asarray(kde, np.float64)
    examples = np.unique(query)
    M = len(examples)
    if M == 0:
        return Plan(rows=row, mass=np.zeros(len(row)), level=0.0, depth=np.zeros(0, np.int64))
    lists = []
    for j in examples:
        pairs = np.flatnonzero(query == j)
        lists.append(pairs[np.lexsort((pairs, distance[pairs]))])
    scale = max(float(np.mean([distance[p].max() for p in lists])), 1e-12)
    inv = [1.0 / kde[row[p]] for p in lists]
    a, b = alpha / scale, (1.0 - alpha) * M
    weighted = np.array([distance[lists[j][0]] * inv[j][0] for j in range(M)])
    marginal = np.zeros(M)
    heap = [(float(inv[j][0]), 0, j) for j in range(M)]
    heapq.heapify(heap)
    total, level = 0.0, 0.0
    while heap:
        level, k, j = heapq.heappop(heap)
        if k + 1 >= len(lists[j]):
            break  # j's whole list is at the cap: the level cannot rise further
        total += distance[lists[j][k + 1]] * level - weighted[j] - marginal[j]
        marginal[j] = distance[lists[j][k + 1]] * level - weighted[j]
        if a * total >= b:
            break
        weighted[j] += distance[lists[j][k + 1]] * inv[j][k + 1]
        heapq.heappush(heap, (level + float(inv[j][k + 1]), k + 1, j))
    mass = np.zeros(len(row))
    depth = np.zeros(M, np.int64)
    for j, pairs in enumerate(lists):
        left = 1.0 / M
        for k, pair in enumerate(pairs):
            give = min(left, 1.0 / (M * level * kde[row[pair]]))
            mass[pair] = give
            left -= give
            if left <= 1e-15:
                depth[j] = k + 1
                break
        else:
            mass[pairs[-1]] += left  # rounding only: the level never leaves a list short
            depth[j] = len(pairs)
    return Plan(rows=row, mass=mass, level=level, depth=depth)


def plan_value(query: np.ndarray, row: np.ndarray, distance: np.ndarray, kde: np.ndarray, mass: np.ndarray,
               alpha: float) -> float:
    """The objective of a plan (for tests): (α/C)·Σ γ d + (1 − α)·M·max γ κ."""
    query, row = np.asarray(query), np.asarray(row)
    distance, mass = np.asarray(distance, np.float64), np.asarray(mass, np.float64)
    examples = np.unique(query)
    scale = max(float(np.mean([distance[query == j].max() for j in examples])), 1e-12)
    return (alpha / scale) * float(mass @ distance) + (1 - alpha) * len(examples) * float(np.max(mass * kde[row]))


def row_probabilities(plan: Plan, n_rows: int) -> np.ndarray:
    """p_b = Σ_j γ_jb: the mass every pool row receives (sums to 1)."""
    return np.bincount(plan.rows, weights=plan.mass, minlength=n_rows)


def draw(probability: np.ndarray, budget: int, seed: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """`budget` rows drawn without replacement with these probabilities (Gumbel top-k, seeded); rows with
    p = 0 come last, in a seeded order, so a budget beyond the rows with mass is still filled."""
    p = np.asarray(probability, np.float64)
    allowed = np.ones(len(p), bool) if allowed is None else np.asarray(allowed, bool)
    gumbel = np.random.default_rng([seed, 23]).gumbel(size=len(p))
    with np.errstate(divide="ignore"):
        key = np.where(p > 0, np.log(p), -np.inf) + gumbel
    tail = np.where(p > 0, 0.0, gumbel)  # among p = 0: the Gumbel alone
    order = np.lexsort((-tail, -key))
    order = order[allowed[order]]
    return order[:budget]
