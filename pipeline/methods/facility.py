"""Facility location over the retrieved pool, weighted by target likeness (ALBAT `objective=facility`).

Every global re-ranking tried before (v1's curvature, v2's set objective, the reducible loss) either
concentrates on a few dense neighbourhoods or, with knn's round-robin, keeps knn's near-duplicates
(docs/albat-design.md). Facility location chooses the set that best *represents* the pool where the
target puts its mass:

    F(S) = Σ_{c∈P} w_c · max_{b∈S} s(c, b),      w_c = Σ_a softmax_{c∈P}(cos(c, a) / T)

P is the retrieved pool, s(c, b) = max(0, cos(c, b)) restricted to each c's `neighbours` most similar
pool rows (a sparse graph, so memory is O(|P|·k), not |P|²), and T the `temperature`: every adaptation
example a spreads one unit of mass over the pool, most on its nearest rows (`target_weight=nearest`
uses exp((rel_c − max rel)/T) of c's nearest example's cosine instead). Read through the propositions: w is a
kernel estimate of the target's density over the pool, so a set that covers w-heavy regions matches
the target's distribution and does not move the adaptation optimum (validity); the max gives
diminishing returns, so a near-duplicate of a chosen row adds almost nothing while a row covering a
new target-heavy region adds much (benefit: new curvature where the target needs it, not the same
curvature twice). F is monotone submodular, so the greedy set is within 1 − 1/e of the best.

Greedy is exact and lazy (Minoux): a row's gain can only shrink as S grows, so a stale gain is an
upper bound, and a popped row whose fresh gain still beats the next bound is the argmax. Ties go to
the lower row index, as the dense greedy's `argmax` does (tests check both against brute force).
Every function takes and returns arrays.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np


def target_weights(relevance: np.ndarray, temperature: float) -> np.ndarray:
    """w_c = exp((rel_c − max rel) / T), in (0, 1]; T = inf gives every row weight 1."""
    rel = np.asarray(relevance, np.float64)
    if not len(rel) or not np.isfinite(temperature):
        return np.ones(len(rel))
    return np.exp((rel - rel.max()) / temperature)


def example_mass_weights(cos: np.ndarray, temperature: float) -> np.ndarray:
    """w_c = Σ_a softmax_c(cos[c, a] / T): each adaptation example a (a column of the pool × examples
    cosine matrix) spreads one unit of mass over the pool, most on its nearest rows, so every example
    gets its share of the weight (knn's round-robin, as a distribution) and Σ_c w_c = n_A. T = inf
    spreads every example's mass evenly."""
    cos = np.asarray(cos, np.float64)
    if not cos.size:
        return np.zeros(len(cos))
    if not np.isfinite(temperature):
        return np.full(len(cos), cos.shape[1] / len(cos))
    k = np.exp((cos - cos.max(axis=0, keepdims=True)) / temperature)
    return (k / k.sum(axis=0, keepdims=True)).sum(axis=1)


def neighbour_graph(vectors: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(idx, sim), each (N, k'): every row's k' = min(k, N) most similar rows by dot product (itself
    among them for unit vectors), similarities clipped at 0, computed in row blocks so memory stays
    O(block·N). Ties to the lower column index."""
    x = np.asarray(vectors, np.float32)
    n = len(x)
    k = min(k, n)
    idx = np.empty((n, k), np.int64)
    sim = np.empty((n, k), np.float64)
    for start in range(0, n, block):
        s = x[start:start + block] @ x.T
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        idx[start:start + block] = top
        sim[start:start + block] = np.take_along_axis(s, top, axis=1)
    return idx, np.clip(sim, 0.0, None)


@dataclass
class FacilityTrace:
    order: np.ndarray  # chosen rows, in the order they were taken
    gain: np.ndarray  # F(S ∪ b) − F(S) at the step b was taken (nan if never taken)
    last_gain: np.ndarray  # the freshest gain known for every row when the greedy stopped
    value: float  # F of the chosen set


def facility_location(idx: np.ndarray, sim: np.ndarray, weight: np.ndarray, budget: int,
                      allowed: np.ndarray | None = None) -> FacilityTrace:
    """Greedy max of F(S) = Σ_c w_c max_{b∈S} s(c, b) over the sparse graph (idx, sim) from
    `neighbour_graph`: s(c, b) = sim[c, j] where idx[c, j] = b, else 0. Only `allowed` rows are
    chosen (all rows still count as points to cover). Stops at `budget` rows or when none is allowed."""
    n = len(idx)
    w = np.asarray(weight, np.float64)
    allowed = np.ones(n, bool) if allowed is None else np.asarray(allowed, bool)
    # reverse graph: for each candidate b, the points c it can cover and s(c, b), as CSR
    rows = np.repeat(np.arange(n), idx.shape[1])
    cols = idx.reshape(-1)
    vals = sim.reshape(-1)
    by_b = np.argsort(cols, kind="stable")
    points, cover_sim = rows[by_b], vals[by_b]
    start = np.searchsorted(cols[by_b], np.arange(n + 1))
    covered = np.zeros(n)

    def gain_of(b: int) -> float:
        c = points[start[b]:start[b + 1]]
        return float(np.sum(w[c] * np.maximum(cover_sim[start[b]:start[b + 1]] - covered[c], 0.0)))

    last = np.full(n, np.nan)
    taken = np.full(n, np.nan)
    heap = []
    for b in np.flatnonzero(allowed):
        last[b] = gain_of(int(b))
        heap.append((-last[b], int(b)))
    heapq.heapify(heap)
    order: list[int] = []
    value = 0.0
    while heap and len(order) < budget:
        _, b = heapq.heappop(heap)
        fresh = gain_of(b)
        last[b] = fresh
        if heap and (-fresh, b) > heap[0]:
            heapq.heappush(heap, (-fresh, b))  # stale: another row's bound may beat it now
            continue
        order.append(b)
        taken[b] = fresh
        value += fresh
        c = points[start[b]:start[b + 1]]
        covered[c] = np.maximum(covered[c], cover_sim[start[b]:start[b + 1]])
    for _, b in heap:  # everyone left: their gain against the final set
        last[b] = gain_of(b)
    return FacilityTrace(order=np.asarray(order, np.int64), gain=taken, last_gain=last, value=value)


def facility_value(idx: np.ndarray, sim: np.ndarray, weight: np.ndarray, chosen: np.ndarray) -> float:
    """F(S) by direct evaluation (the reference the greedy's gains are tested against)."""
    chosen_set = set(np.asarray(chosen, np.int64).tolist())
    total = 0.0
    for c in range(len(idx)):
        best = max((s for b, s in zip(idx[c], sim[c]) if int(b) in chosen_set), default=0.0)
        total += float(weight[c]) * max(best, 0.0)
    return total


def explain_facility(kept: bool, gain: float, cut: float, rel: float, weight: float) -> str:
    """One line per decision: the coverage it added (or could add at the end) against the cut."""
    if kept:
        return (f"kept: facility gain {gain:.4g} (target-weighted coverage of the pool it adds); "
                f"relevance {rel:.4f}, target weight {weight:.3g}")
    return (f"rejected: budget filled; its last facility gain {gain:.4g} ≤ the last kept gain {cut:.4g} "
            f"(what it would cover is already covered, or lies where the target puts little weight); "
            f"relevance {rel:.4f}")
