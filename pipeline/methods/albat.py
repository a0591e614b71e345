"""`albat`: the proposition filter (../shared/ALBAT.md, "Our design").

`objective=v2` replaces steps 2-4 below with one set objective: relevance plus the surrogate's
bias-variance risk in the adaptation's curvature subspace, maximised greedily
(`pipeline.methods.setobjective`, docs/albat-design.md). `objective=v1` (the default: it measured
better, see docs/albat-design.md) is the filter below. `objective=reducible` re-ranks the retrieved pool
by the loss adaptation removes, z(ℓ(φ_0;b) − ℓ(φ_s;b)) + relevance_weight·z(relevance)
(`pipeline.methods.reducible`; GOT-D / RHO-loss style, forward passes only). `objective=facility`
chooses the set that best covers the pool where the target puts its mass, max Σ_c w_c max_{b∈S} s(c, b)
(`pipeline.methods.facility`; in the retrieval embedding or the surrogate's gradient space).
`objective=match` draws the set from an optimal transport of the adaptation examples onto their
retrieved neighbours with a cap on near-duplicates (`pipeline.methods.matching`; TSDS), and
`objective=dpp` takes the greedy MAP of a k-DPP, relevance as quality and the rows' span as diversity
(`pipeline.methods.dpp`). These three need no surrogate (facility only in the gradient space).

1. Train the surrogate φ_s on the adaptation set (φ_0: the untouched backbone).
2. Validity (Proposition 1), per example: adaptation must not hurt it, Δℓ_b = ℓ(φ_s;b) − ℓ(φ_0;b) ≤ τ.
3. Benefit (Proposition 2): rank the valid examples by curvature, the label-free Fisher trace at φ_s.
4. Validity over the set, greedily in that order: add b only while
       drift(S) ≤ ε · ‖mean_{a∈D_A} ∇ℓ(φ_0;a)‖,   drift(S) = ‖mean_{b∈S} ∇ℓ(φ_s;b)‖ (set_norm=mean)
   so the selection does not move the adaptation optimum; stop at the budget m. With set_norm=pairwise,
   drift(S) is the noise-free estimate √(mean_{b≠b'} ∇ℓ_b·∇ℓ_b') of the same norm (`set_drift`).
Every candidate gets Δℓ, its gradient norm, its curvature and the reason it was kept or rejected.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from albat.pipeline.methods.base import SelectionRequest, SelectionResult
from albat.pipeline.methods.ranked import candidate_columns, ranked_result
from albat.pipeline.methods.surrogate_inputs import SurrogateMethod, SurrogatePool, prepare_pool
from albat.pipeline.options import FLOAT, INT, STR, Option
from albat.pipeline.surrogates.options import SURROGATE_OPTIONS
from albat.stores.errors import AlbatError

# The options (declared on AlbatMethod.OPTIONS), why their defaults:
# curvature: "trace" (tr F at φ_s) or "adaptation" (uᵀ F u along u, the unit mean adaptation
# gradient at φ_0: the curvature added along the path adaptation travels from the backbone)
# tau: inf by default, the per-example test off. On the selection benchmark the test Δℓ ≤ 0 rejected
# most in-domain candidates at large budgets (n_A = 256, m = 16·n_A) and cost up to 0.017 MRR, and it was
# neutral elsewhere (BENCHMARKS.md, albat ablation); the set bound (epsilon) is what helps.
# set_norm: "auto" is "mean" for contrastive (measured in the selection benchmark) and "pairwise" for lm:
# a single text's LoRA gradient is 4.6 to 35 times the norm of the adaptation set's mean gradient (the
# bench-lm backbone, WordNet plants, n_A = 16), so the plain mean of a small S can never pass and albat
# kept nothing; the pairwise estimate removes that per-example noise and keeps the drift.

KEPT, INVALID_LOSS, INVALID_GRADIENT, BUDGET = 0, 1, 2, 3


@dataclass
class FilterDecision:
    order: np.ndarray  # indices of kept rows, in selection order
    status: np.ndarray  # KEPT | INVALID_LOSS | INVALID_GRADIENT | BUDGET per row
    mean_grad_norm: np.ndarray  # set_drift(S ∪ {b}) when b was tried (nan if never tried)


def set_drift(total: np.ndarray, squares: float, k: int, pairwise: bool) -> float:
    """How far k gradients with sum `total` (and sum of squared norms `squares`) push, as a norm.

    mean: ‖total / k‖. pairwise: √max(0, mean_{b≠b'} g_b·g_b') = √((‖total‖² − squares) / (k(k−1))),
    the unbiased estimate of ‖E g‖² with the per-example noise σ²/k removed (0 for k = 1: one
    example shows no common direction yet)."""
    if not pairwise:
        return float(np.linalg.norm(total) / k)
    if k < 2:
        return 0.0
    return float(np.sqrt(max(float(total @ total) - squares, 0.0) / (k * (k - 1))))


def proposition_filter(delta_loss: np.ndarray, grads: np.ndarray, curvature: np.ndarray, bound: float,
                       tau: float, budget: int, pairwise: bool = False, walk: np.ndarray | None = None) -> FilterDecision:
    """The pure filter: validity by Δℓ ≤ τ, then curvature order with the greedy set-gradient bound
    `set_drift(S ∪ {b}) ≤ bound` (see `set_drift` for the two norms).

    `bound` is ε·‖mean adaptation gradient at φ_0‖. Ties in curvature go to the lower row index.
    `walk` (row indices) replaces the curvature order, e.g. the coverage order of
    `pipeline.methods.coverage`; rows missing from it are never tried."""
    n = len(delta_loss)
    status = np.full(n, BUDGET, dtype=np.int8)
    status[delta_loss > tau] = INVALID_LOSS
    tried = np.full(n, np.nan)
    valid = np.nonzero(status != INVALID_LOSS)[0]
    if walk is None:
        candidates = valid[np.lexsort((valid, -curvature[valid]))]
    else:
        walk = np.asarray(walk, np.int64)
        candidates = walk[status[walk] != INVALID_LOSS]
    total, squares = np.zeros(grads.shape[1], dtype=np.float64), 0.0
    kept: list[int] = []
    for row in candidates:
        if len(kept) == budget:
            break
        g = grads[row].astype(np.float64)
        trial, trial_squares = total + g, squares + float(g @ g)
        tried[row] = set_drift(trial, trial_squares, len(kept) + 1, pairwise)
        if tried[row] <= bound:
            total, squares = trial, trial_squares
            kept.append(row)
            status[row] = KEPT
        else:
            status[row] = INVALID_GRADIENT
    return FilterDecision(order=np.array(kept, dtype=np.int64), status=status, mean_grad_norm=tried)


def explain(status: int, delta: float, tried: float, curvature: float, tau: float, bound: float) -> str:
    if status == KEPT:
        return f"kept: Δℓ={delta:+.4f} ≤ τ={tau:g}, curvature {curvature:.4g}, set gradient drift {tried:.4g} ≤ {bound:.4g}"
    if status == INVALID_LOSS:
        return f"rejected: validity, Δℓ={delta:+.4f} > τ={tau:g} (adaptation makes this example worse)"
    if status == INVALID_GRADIENT:
        return f"rejected: validity, adding it moves the set's gradient drift to {tried:.4g} > ε·‖ḡ_A‖={bound:.4g}"
    return f"rejected: budget filled before its curvature {curvature:.4g}"


def explain_v2(kept: bool, rel: float, gain: float, d_bias: float, d_var: float, last: float, cut: float,
               delta: float, tau: float) -> str:
    """One line per v2 decision: the marginal gain and which term decided it."""
    if delta > tau:
        return f"rejected: validity, Δℓ={delta:+.4f} > τ={tau:g} (adaptation makes this example worse)"
    if kept:
        terms = {"relevance": rel, "bias": d_bias, "variance": d_var}
        top = max(terms, key=lambda k: abs(terms[k]))
        return (f"kept: marginal gain {gain:+.4f} = relevance {rel:.4f} {d_bias:+.4f} (bias) {d_var:+.4f} (variance); "
                f"decided by {top}")
    return f"rejected: budget filled; its last marginal gain {last:+.4f} < the last kept gain {cut:+.4f}"


def fitted_pool(request: SelectionRequest, opts: dict):
    """The pool with its surrogate fitted, the fit report and seconds, the losses at φ_0 and φ_s, and
    the clock started for the scoring time (which includes the losses)."""
    clock = time.perf_counter()
    pool = prepare_pool(request, opts)
    fit = pool.surrogate.fit(pool.adaptation, request.seed)
    fit_seconds = time.perf_counter() - clock
    clock = time.perf_counter()
    loss0, loss_s = pool.surrogate.losses(pool.pairs, "initial"), pool.surrogate.losses(pool.pairs, "adapted")
    return pool, fit, fit_seconds, loss0, loss_s, clock


class AlbatMethod(SurrogateMethod):
    name = "albat"
    OPTIONS = SURROGATE_OPTIONS + (
        Option("tau", FLOAT, float("inf"), "per-example validity bound on Δℓ (inf: the test is off)", inf=True),
        Option("epsilon", FLOAT, 1.0, "set validity: drift bound as a multiple of ‖mean adaptation gradient‖ "
               "(inf: no set bound)", min=0, inf=True),
        Option("fisher_samples", INT, 2, "labels sampled per example for the Fisher-trace curvature", min=1),
        Option("curvature", STR, "trace", "trace (tr F at φ_s) or adaptation (uᵀFu along the mean adaptation gradient)",
               choices=("trace", "adaptation")),
        Option("set_norm", STR, "auto", "set drift norm: mean, pairwise, or auto (mean for contrastive, pairwise for lm)",
               choices=("auto", "mean", "pairwise")),
        # v2: J(S) = Σ rel_b − β·m·(b·B(S) + v·V(S))/R_0 in the top-`rank` whitened H_A subspace
        # (docs/albat-design.md). v1 stays the default: on the reduced selection benchmark v1 was at or
        # above the best baseline within the seed spread in 9 of 12 cells, v2 in 6 of 12.
        Option("objective", STR, "v1", "v1 (proposition filter), v2 (one set objective: relevance − bias-variance "
               "risk), reducible (re-rank the pool by z(ℓ(φ_0) − ℓ(φ_s)) + relevance_weight·z(relevance)) or "
               "facility (target-weighted facility location over the pool) or match (a draw from the optimal "
               "transport of the adaptation examples onto the pool, near-duplicates capped: TSDS) or dpp (greedy "
               "MAP of a k-DPP: relevance as quality, the volume the rows' vectors span as diversity)",
               choices=("v1", "v2", "reducible", "facility", "match", "dpp")),
        Option("alpha", FLOAT, 0.5, "match: weight of the transport cost against the near-duplicate cap (1: every "
               "example's nearest neighbour; 0: spread as far as the retrieved lists go)", min=0, max=1),
        Option("sigma", FLOAT, 0.75, "match: kernel radius of the near-duplicate density, in distance between unit "
               "vectors (0: no penalty)", min=0),
        Option("temperature", FLOAT, 0.05, "facility: T of the target weights exp(cos/T) (inf: every pool row "
               "weighs the same); dpp: T of the quality exp(rel/2T), relevance against diversity", above=0, inf=True),
        Option("target_weight", STR, "per_example", "facility: per_example (each adaptation example spreads unit "
               "mass over the pool by softmax(cos/T)) or nearest (exp((rel − max rel)/T) of the nearest example's cosine)",
               choices=("per_example", "nearest")),
        Option("neighbours", INT, 64, "facility: most similar pool rows each row can be covered by (the sparse "
               "graph's degree)", min=1),
        Option("facility_space", STR, "embedding", "facility: embedding (the store's vectors) or gradient (the "
               "surrogate's per-example gradients at φ_s, normalised; fits the surrogate)",
               choices=("embedding", "gradient")),
        Option("coverage", STR, "none", "v1 and reducible: none (one global order) or round_robin (knn's round-robin "
               "over adaptation examples, each example's neighbours ordered by the objective's score)",
               choices=("none", "round_robin")),
        Option("reducible_units", STR, "mean", "reducible: mean (per-token reducible loss) or sum (times the "
               "candidate's tokens: the whole text's log-likelihood ratio; lm only differs)", choices=("mean", "sum")),
        Option("relevance_weight", FLOAT, 1.0, "reducible: weight of the standardised relevance (0: reducible loss alone)",
               min=0),
        Option("beta", FLOAT, 1.0, "v2: weight of the risk against relevance", min=0),
        Option("bias", FLOAT, 1.0, "v2: weight of the bias term B(S)", min=0),
        Option("variance", FLOAT, 1.0, "v2: weight of the variance term V(S)", min=0),
        Option("rank", INT, 32, "v2: directions kept of the adaptation curvature H_A", min=1),
        Option("backbone_weight", FLOAT, 1.0, "v2: λ of the BAT loss the risk is computed for", above=0),
        Option("sample", FLOAT, 0.0, "v2: Gumbel noise on relevance in units of its std (0: top-k; >0: draw)", min=0),
    )

    def __init__(self, **options):
        super().__init__(**options)
        objective = self.options["objective"]
        if self.options["coverage"] != "none" and objective not in ("v1", "reducible"):
            raise AlbatError(f"method albat: coverage=round_robin applies to objective=v1 or reducible, not "
                             f"{objective} ({'v2 is one set objective' if objective == 'v2' else 'it spreads the budget over the adaptation examples itself'}); "
                             "drop coverage or pick another objective")

    def select(self, request: SelectionRequest) -> SelectionResult:
        opts = self.options
        if opts["objective"] == "v2":
            return self._select_v2(request, opts)
        if opts["objective"] == "reducible":
            return self._select_reducible(request, opts)
        if opts["objective"] == "facility":
            return self._select_facility(request, opts)
        if opts["objective"] == "match":
            return self._select_match(request, opts)
        if opts["objective"] == "dpp":
            return self._select_dpp(request, opts)
        pool, fit, fit_seconds, loss0, loss_s, clock = fitted_pool(request, opts)
        surrogate, pairs = pool.surrogate, pool.pairs
        grads = surrogate.gradients(pairs, "adapted")
        adaptation_grad = surrogate.gradients(pool.adaptation, "initial").mean(0)
        bound = float(opts["epsilon"] * np.linalg.norm(adaptation_grad))
        direction = adaptation_grad / max(np.linalg.norm(adaptation_grad), 1e-12) if opts["curvature"] == "adaptation" else None
        curvature = surrogate.fisher_trace(pairs, "adapted", opts["fisher_samples"], request.seed, direction)
        score_seconds = time.perf_counter() - clock

        delta = loss_s - loss0
        walked = _walk(request, pool, curvature, opts)
        set_norm = opts["set_norm"] if opts["set_norm"] != "auto" else ("pairwise" if opts["surrogate"] == "lm" else "mean")
        decision = proposition_filter(delta, grads, curvature, bound, opts["tau"], request.budget,
                                      pairwise=set_norm == "pairwise", walk=None if walked is None else walked[0])
        status = np.full(len(pool.ids), BUDGET, dtype=np.int8)
        status[pool.rows] = decision.status
        columns = {"loss_initial": pool.spread(loss0), "loss_adapted": pool.spread(loss_s),
                   "delta_loss": pool.spread(delta), "grad_norm": pool.spread(np.linalg.norm(grads, axis=1)),
                   "curvature": pool.spread(curvature), "set_grad_norm": pool.spread(decision.mean_grad_norm)}
        why = lambda row: explain(status[row], columns["delta_loss"][row], columns["set_grad_norm"][row],  # noqa: E731
                                  columns["curvature"][row], opts["tau"], bound)
        why = _with_turns(why, pool, walked, pool.rows[decision.order], columns)
        report = {"surrogate": opts["surrogate"], "objective": "v1", "tau": opts["tau"] if np.isfinite(opts["tau"]) else "inf",
                  "epsilon": opts["epsilon"], "set_norm": set_norm, "coverage": opts["coverage"],
                  "gradient_bound": round(bound, 6), "valid_by_loss": int(np.sum(delta <= opts["tau"]))}
        return _explained_result(pool, columns["curvature"], pool.rows[decision.order], why, columns, report,
                                 fit, fit_seconds, score_seconds)

    def _select_reducible(self, request: SelectionRequest, opts: dict) -> SelectionResult:
        """Top-m of z(reducible loss) + w·z(relevance) over the retrieved pool (`pipeline.methods.reducible`)."""
        from albat.pipeline.methods.ranked import check_budget, top_scores
        from albat.pipeline.methods.reducible import explain_reducible, reducible_scores, zscore

        pool, fit, fit_seconds, loss0, loss_s, clock = fitted_pool(request, opts)
        check_budget(request.budget, len(pool.rows), "the candidate pool (raise query.k)")
        rel = request.candidates.column("similarity").to_numpy().astype(np.float64)[pool.rows]
        weight = opts["relevance_weight"]
        units = pool.surrogate.unit_counts(pool.pairs) if opts["reducible_units"] == "sum" else None
        score, red = reducible_scores(loss0, loss_s, rel, weight, units)
        walked = _walk(request, pool, score, opts)
        order = top_scores(score, pool.ids[pool.rows], request.budget) if walked is None else walked[0][: request.budget]
        score_seconds = time.perf_counter() - clock
        columns = {"loss_initial": pool.spread(loss0), "loss_adapted": pool.spread(loss_s),
                   "delta_loss": pool.spread(loss_s - loss0), "reducible_loss": pool.spread(red),
                   "relevance": pool.spread(rel), "z_reducible": pool.spread(zscore(red)),
                   "z_relevance": pool.spread(zscore(rel)), "reducible_score": pool.spread(score)}
        if units is not None:
            columns["units"] = pool.spread(units)
        cut = float(score[order[-1]]) if len(order) else np.inf
        kept_rows = pool.rows[order]
        keep = np.zeros(len(pool.ids), bool)
        keep[kept_rows] = True
        why = lambda row: explain_reducible(bool(keep[row]), columns["reducible_score"][row],  # noqa: E731
                                            columns["reducible_loss"][row], columns["z_reducible"][row],
                                            columns["z_relevance"][row], weight, None if walked else cut)
        why = _with_turns(why, pool, walked, kept_rows, columns)
        report = {"surrogate": opts["surrogate"], "objective": "reducible", "relevance_weight": weight,
                  "coverage": opts["coverage"], "reducible_units": opts["reducible_units"],
                  "mean_reducible_kept": round(float(red[order].mean()), 6) if len(order) else None,
                  "mean_reducible_pool": round(float(red.mean()), 6) if len(red) else None}
        return _explained_result(pool, columns["reducible_score"], kept_rows, why, columns, report,
                                 fit, fit_seconds, score_seconds)

    def _select_facility(self, request: SelectionRequest, opts: dict) -> SelectionResult:
        """Greedy target-weighted facility location over the retrieved pool (`pipeline.methods.facility`)."""
        from albat.pipeline.methods.facility import (example_mass_weights, explain_facility, facility_location,
                                                     neighbour_graph, target_weights)
        from albat.pipeline.methods.ranked import check_budget

        clock = time.perf_counter()
        validity = np.isfinite(opts["tau"])  # the per-example test needs the surrogate's losses
        if opts["facility_space"] == "gradient" or validity:
            pool, fit, fit_seconds, loss0, loss_s, clock = fitted_pool(request, opts)
        else:
            pool = _embedding_pool(request)
            fit, fit_seconds = {"skipped": "facility_space=embedding uses no surrogate"}, 0.0
        check_budget(request.budget, len(pool.rows), "the candidate pool (raise query.k)")
        rel = request.candidates.column("similarity").to_numpy().astype(np.float64)[pool.rows]
        vectors = request.store.vectors_for_ids(pool.ids[pool.rows]).astype(np.float32)
        if opts["target_weight"] == "per_example":
            weight = example_mass_weights(vectors @ request.adaptation_vectors.astype(np.float32).T, opts["temperature"])
        else:
            weight = target_weights(rel, opts["temperature"])
        if opts["facility_space"] == "gradient":
            grads = pool.surrogate.gradients(pool.pairs, "adapted")
            vectors = grads / np.maximum(np.linalg.norm(grads, axis=1, keepdims=True), 1e-12)
        allowed = (loss_s - loss0 <= opts["tau"]) if validity else np.ones(len(pool.rows), bool)
        check_budget(request.budget, int(allowed.sum()), "the candidate pool after the Δℓ ≤ τ test (raise query.k)")
        idx, sim = neighbour_graph(vectors, opts["neighbours"])
        trace = facility_location(idx, sim, weight, request.budget, allowed)
        score_seconds = time.perf_counter() - clock

        gain = np.where(np.isnan(trace.gain), trace.last_gain, trace.gain)
        columns = {"relevance": pool.spread(rel), "target_weight": pool.spread(weight),
                   "facility_gain": pool.spread(gain)}
        if validity:
            columns.update(loss_initial=pool.spread(loss0), loss_adapted=pool.spread(loss_s),
                           delta_loss=pool.spread(loss_s - loss0))
        kept_rows = pool.rows[trace.order]
        keep = np.zeros(len(pool.ids), bool)
        keep[kept_rows] = True
        cut = float(trace.gain[trace.order[-1]]) if len(trace.order) else np.inf
        delta = columns.get("delta_loss")
        why = lambda row: (  # noqa: E731
            f"rejected: validity, Δℓ={delta[row]:+.4f} > τ={opts['tau']:g} (adaptation makes this example worse)"
            if delta is not None and not keep[row] and delta[row] > opts["tau"] else
            explain_facility(bool(keep[row]), columns["facility_gain"][row], cut, columns["relevance"][row],
                             columns["target_weight"][row]))
        report = {"surrogate": opts["surrogate"] if opts["facility_space"] == "gradient" else None,
                  "objective": "facility", "facility_space": opts["facility_space"],
                  "temperature": opts["temperature"] if np.isfinite(opts["temperature"]) else "inf",
                  "target_weight": opts["target_weight"], "neighbours": opts["neighbours"],
                  "tau": opts["tau"] if validity else "inf", "valid_by_loss": int(allowed.sum()),
                  "facility_value": round(trace.value, 6),
                  "covered_weight_share": round(trace.value / max(float(weight.sum()), 1e-12), 6)}
        return _explained_result(pool, columns["facility_gain"], kept_rows, why, columns, report,
                                 fit, fit_seconds, score_seconds)

    def _select_match(self, request: SelectionRequest, opts: dict) -> SelectionResult:
        """A seeded draw from the transport of the adaptation examples onto their neighbours
        (`pipeline.methods.matching`)."""
        from albat.pipeline.methods.coverage import pair_scores
        from albat.pipeline.methods.matching import draw, kde_counts, row_probabilities, transport_plan
        from albat.pipeline.methods.ranked import check_budget

        clock = time.perf_counter()
        pool = _embedding_pool(request)
        ids, rows = pool.ids, pool.rows
        check_budget(request.budget, len(rows), "the candidate pool (raise query.k)")
        pairs = request.pairs
        selectable = pool.ids[rows]
        row_of_pair, found = pair_scores(pairs.column("candidate_id").to_numpy().astype(np.int64), selectable,
                                         np.arange(len(selectable)))  # blocked rows' pairs are not found
        pair_row = row_of_pair[found].astype(np.int64)
        cos = pairs.column("similarity").to_numpy().astype(np.float64)[found]
        distance = np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0))
        kde = kde_counts(request.store.vectors_for_ids(selectable), opts["sigma"])
        plan = transport_plan(pairs.column("query_idx").to_numpy()[found], pair_row, distance, kde, opts["alpha"])
        probability = row_probabilities(plan, len(rows))
        order = draw(probability, request.budget, request.seed)
        score_seconds = time.perf_counter() - clock

        kept_rows = rows[order]
        keep = np.zeros(len(ids), bool)
        keep[kept_rows] = True
        columns = {"match_probability": pool.spread(probability), "kde": pool.spread(kde)}
        mass_rows = int((probability > 0).sum())

        def why(row: int) -> str:
            p, k = columns["match_probability"][row], columns["kde"][row]
            if keep[row] and p > 0:
                return (f"kept: drawn with probability {p:.4g} (its share of the adaptation examples' transported "
                        f"mass; near-duplicate density {k:.3g})")
            if keep[row]:
                return "kept: no transported mass; drawn to fill the budget after every row with mass"
            if p > 0:
                return f"rejected: not drawn (probability {p:.4g}; near-duplicate density {k:.3g})"
            return "rejected: no transported mass (no adaptation example reaches it at the optimal level)"
        report = {"surrogate": None, "objective": "match", "alpha": opts["alpha"], "sigma": opts["sigma"],
                  "level": round(float(plan.level), 6), "rows_with_mass": mass_rows,
                  "mean_depth": round(float(plan.depth.mean()), 3) if len(plan.depth) else 0.0}
        return _explained_result(pool, columns["match_probability"], kept_rows, why, columns, report,
                                 {"skipped": "objective=match uses no surrogate"}, 0.0, score_seconds)

    def _select_dpp(self, request: SelectionRequest, opts: dict) -> SelectionResult:
        """Greedy MAP of the k-DPP over the retrieved pool (`pipeline.methods.dpp`)."""
        from albat.pipeline.methods.dpp import explain_dpp, greedy_map, quality
        from albat.pipeline.methods.ranked import check_budget

        clock = time.perf_counter()
        pool = _embedding_pool(request)
        check_budget(request.budget, len(pool.rows), "the candidate pool (raise query.k)")
        rel = request.candidates.column("similarity").to_numpy().astype(np.float64)[pool.rows]
        q = quality(rel, opts["temperature"]) if np.isfinite(opts["temperature"]) else np.ones(len(rel))
        trace = greedy_map(request.store.vectors_for_ids(pool.ids[pool.rows]), q, request.budget)
        score_seconds = time.perf_counter() - clock
        gain = np.where(np.isnan(trace.gain), trace.last_gain, trace.gain)
        columns = {"relevance": pool.spread(rel), "dpp_quality": pool.spread(q), "logdet_gain": pool.spread(gain)}
        kept_rows = pool.rows[trace.order]
        keep = np.zeros(len(pool.ids), bool)
        keep[kept_rows] = True
        cut = float(trace.gain[trace.order[-1]]) if len(trace.order) else np.inf
        why = lambda row: explain_dpp(bool(keep[row]), columns["logdet_gain"][row], cut,  # noqa: E731
                                      columns["relevance"][row])
        report = {"surrogate": None, "objective": "dpp",
                  "temperature": opts["temperature"] if np.isfinite(opts["temperature"]) else "inf"}
        return _explained_result(pool, columns["logdet_gain"], kept_rows, why, columns, report,
                                 {"skipped": "objective=dpp uses no surrogate"}, 0.0, score_seconds)

    def _select_v2(self, request: SelectionRequest, opts: dict) -> SelectionResult:
        from threadpoolctl import threadpool_limits

        from albat.pipeline.methods.ranked import check_budget
        from albat.pipeline.methods.setobjective import greedy, whiten

        pool, fit, fit_seconds, loss0, loss_s, clock = fitted_pool(request, opts)
        surrogate, pairs = pool.surrogate, pool.pairs
        delta = loss_s - loss0
        valid = delta <= opts["tau"]
        check_budget(request.budget, int(valid.sum()), "the candidate pool after the Δℓ ≤ τ test (raise query.k)")
        grads = surrogate.gradients(pairs, "adapted")
        w, sigma2 = whiten(surrogate.gradients(pool.adaptation, "adapted"), grads, opts["rank"])
        rel = request.candidates.column("similarity").to_numpy().astype(np.float64)[pool.rows]
        key = rel + (opts["sample"] * float(np.std(rel)) * np.random.default_rng([request.seed, 31]).gumbel(size=len(rel))
                     if opts["sample"] > 0 and len(rel) else 0.0)
        n_a = len(pool.adaptation)
        with threadpool_limits(1):  # many small products: BLAS threads only contend
            trace = greedy(key, w, request.budget, opts["backbone_weight"] / max(request.budget, 1), n_a,
                           beta=opts["beta"], bias=opts["bias"], variance=opts["variance"], allowed=valid)
        score_seconds = time.perf_counter() - clock

        gain = np.where(np.isnan(trace.gain), trace.last_gain, trace.gain)
        columns = {"loss_initial": pool.spread(loss0), "loss_adapted": pool.spread(loss_s),
                   "delta_loss": pool.spread(delta), "grad_norm": pool.spread(np.linalg.norm(grads, axis=1)),
                   "relevance": pool.spread(rel), "relevance_key": pool.spread(np.broadcast_to(key, rel.shape)),
                   "marginal_gain": pool.spread(gain),
                   "bias_gain": pool.spread(trace.bias_gain), "variance_gain": pool.spread(trace.variance_gain),
                   "whitened_norm": pool.spread(np.linalg.norm(w, axis=1))}
        kept_rows = pool.rows[trace.order]
        cut = float(trace.gain[trace.order[-1]]) if len(trace.order) else np.inf
        keep = np.zeros(len(pool.ids), bool)
        keep[kept_rows] = True
        why = lambda row: explain_v2(bool(keep[row]), columns["relevance_key"][row], columns["marginal_gain"][row],  # noqa: E731
                                     columns["bias_gain"][row], columns["variance_gain"][row],
                                     columns["marginal_gain"][row], cut, columns["delta_loss"][row], opts["tau"])
        report = {"surrogate": opts["surrogate"], "objective": "v2", "sample": opts["sample"], "beta": opts["beta"], "bias": opts["bias"],
                  "variance": opts["variance"], "rank": int(len(sigma2)), "backbone_weight": opts["backbone_weight"],
                  "tau": opts["tau"] if np.isfinite(opts["tau"]) else "inf", "valid_by_loss": int(valid.sum()),
                  "final_bias": round(trace.risk[0], 6), "final_variance": round(trace.risk[1], 6),
                  "risk_at_empty": round(len(sigma2) / (2 * n_a), 6)}
        return _explained_result(pool, columns["marginal_gain"], kept_rows, why, columns, report,
                                 fit, fit_seconds, score_seconds)


def _embedding_pool(request: SelectionRequest) -> SurrogatePool:
    """The candidate pool for the objectives that need no surrogate (facility in the embedding space,
    match, dpp): every candidate row and the selectable ones."""
    ids, query_idx, block_reason = candidate_columns(request.candidates)
    rows = np.nonzero(~np.isin(ids, request.blocked_ids))[0]
    return SurrogatePool(ids=ids, query_idx=query_idx, block_reason=block_reason, rows=rows, pairs=None,
                         surrogate=None, adaptation=None)


def _walk(request: SelectionRequest, pool, row_score: np.ndarray, opts: dict):
    """With coverage=round_robin: (walk, turn, query) from `pipeline.methods.coverage.covered_rows`,
    walk indexing pool.rows in knn's round-robin over adaptation examples with each example's
    neighbours ordered by `row_score`; None otherwise."""
    if opts["coverage"] == "none":
        return None
    from albat.pipeline.methods.coverage import covered_rows

    pairs = request.pairs
    return covered_rows(pairs.column("query_idx").to_numpy(), pairs.column("rank").to_numpy(),
                        pairs.column("candidate_id").to_numpy().astype(np.int64), pool.ids[pool.rows], row_score)


def _with_turns(why, pool, walked, kept_rows: np.ndarray, columns: dict):
    """Wrap a reason function so each line also says where coverage put the row (and add the
    `coverage_turn` / `coverage_query` columns); `why` unchanged without coverage."""
    if walked is None:
        return why
    from albat.pipeline.methods.coverage import explain_turn

    _, turn, query = walked
    columns["coverage_turn"] = pool.spread(turn.astype(np.float64), fill=-1)
    columns["coverage_query"] = pool.spread(query.astype(np.float64), fill=-1)
    position = np.full(len(pool.ids), -1, np.int64)
    position[kept_rows] = np.arange(len(kept_rows))
    cut_turn = int(columns["coverage_turn"][kept_rows[-1]]) if len(kept_rows) else 0
    return lambda row: (f"{why(row)}; " + explain_turn(int(position[row]), int(columns["coverage_turn"][row]),  # noqa: E731
                                                       int(columns["coverage_query"][row]), cut_turn))


def _explained_result(pool, score: np.ndarray, kept_rows: np.ndarray, why, columns: dict, report: dict, fit: dict,
                      fit_seconds: float, score_seconds: float) -> SelectionResult:
    """The ranked result of an objective: every row's reason from `why(row)`, its score columns, and its
    report followed by the timing keys every objective shares."""
    result = ranked_result(pool.ids, score, kept_rows, pool.query_idx, pool.blocked, pool.block_reason,
                           kept_reason=lambda row, _: why(row), rejected_reason=why, extra=columns)
    result.report = {**report, "fit_seconds": round(fit_seconds, 3), "score_seconds": round(score_seconds, 3),
                     "ms_per_candidate": round(1000 * score_seconds / max(len(pool.rows), 1), 4), "surrogate_fit": fit}
    return result
