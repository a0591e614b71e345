"""What a selection looks like, without training anything: its share of the target's own source
(purity), how alike its rows are (mean pairwise cosine), and how close it comes to the held-out
target texts (coverage), for the methods and for the oracle the language-model track compares with.

Why: on the language-model track the oracle (m random pool rows of the target's own source) beats
every selector in every in-pool cell. A LoRA judge costs minutes a run and the backbone LM an hour
to rebuild; these three numbers cost seconds a cell and say which way a new selection moves against
the oracle before a judge is spent on it. They are a proxy, not a verdict: a selection has to win on
the judges (`bench_lm`, `bench_select`) to count.

It reads the query cells `bench_lm --query-only` prepared (WORK/runs/DOMAIN-nN-sSEED-kK), runs each
method on them in process (`albat.pipeline.filter.build_request`, the filter stage's own request),
and adds analysis-only selections that are not product methods: draws among the corpus's top
q·m rows by classifier log-odds, importance resampling with the classifier's density ratio
exp(log-odds / T) over the corpus (Gumbel top-m), and a self-trained classifier (its top P rows
added as positives, refit). Purity needs the domain in the pool, so vera and fortunes_de are left out.

    python -m benchmarks.selection_proxies --data data/select_fifth --work work/bench_lm_fifth --m 128
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq

from benchmarks.bench_lm import load_domains, own_domain
from benchmarks.report import markdown_table, write_section
from albat.pipeline.filter import build_request
from albat.pipeline.methods.base import SelectionRequest, get_method
from albat.pipeline.methods.classifier import fit_classifier, sample_negatives
from albat.stores.workdir import Workdir

METHODS = {"knn": ("knn", {}), "dsir": ("dsir", {}), "classifier": ("classifier", {}),
           "classifier draw=target": ("classifier", {"draw": "target"}),
           "classifier pool=corpus": ("classifier", {"pool": "corpus"}),
           "classifier pool=corpus draw=target": ("classifier", {"pool": "corpus", "draw": "target"}),
           "classifier C=0.1": ("classifier", {"C": "0.1"}), "classifier C=10": ("classifier", {"C": "10"}),
           "classifier C=100": ("classifier", {"C": "100"}),
           "classifier spread=2": ("classifier", {"spread": "2"}),
           "classifier features=both": ("classifier", {"features": "both"}),
           "classifier features=both spread=2": ("classifier", {"features": "both", "spread": "2"})}


def purity(kept: np.ndarray, owned: np.ndarray) -> float:
    """Share of the kept ids from the target's own source."""
    return float(np.isin(kept, owned).mean()) if len(kept) else float("nan")


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """Mean cosine over distinct pairs of unit rows (lower: a more varied selection)."""
    n = len(vectors)
    return float(((vectors @ vectors.T).sum() - n) / (n * (n - 1))) if n > 1 else float("nan")


def coverage(test: np.ndarray, vectors: np.ndarray) -> float:
    """Mean over the held-out texts of the cosine to the nearest selected row."""
    return float((test @ vectors.T).max(axis=1).mean())


def gumbel_top(log_w: np.ndarray, m: int, seed: int) -> np.ndarray:
    """m positions drawn without replacement with probability proportional to exp(log_w)."""
    return np.argsort(-(log_w + np.random.default_rng([seed, 7]).gumbel(size=len(log_w))), kind="stable")[:m]


def analysis_selections(request: SelectionRequest, vectors: np.ndarray, blocked: np.ndarray, m: int, seed: int
                        ) -> dict[str, np.ndarray]:
    """Positions (into the store's rows) of the analysis-only selections, from the classifier the
    method fits (same negatives, C = 1, seed)."""
    negatives = sample_negatives(request.store, request.blocked_ids, len(request.adaptation_vectors), 0, seed)

    def scores(positives: np.ndarray) -> np.ndarray:
        model = fit_classifier(positives, negatives, 1.0, seed)
        s = vectors @ model.coef_.ravel() + model.intercept_[0]
        s[blocked] = -np.inf
        return s

    score = scores(request.adaptation_vectors)
    order = np.argsort(-score, kind="stable")
    rng = np.random.default_rng([seed, 5])
    out: dict[str, np.ndarray] = {f"draw among corpus top {q}m": rng.choice(order[:q * m], m, replace=False)
                                  for q in (2, 4, 8)}
    for t in (0.5, 1.0):
        out[f"importance resampling T={t}"] = gumbel_top(score / t, m, seed)
    self_score = score
    for _ in range(2):  # self-training: the top 2m rows join the positives, twice
        self_score = scores(np.concatenate([request.adaptation_vectors, vectors[np.argsort(-self_score)[:2 * m]]]))
    out["self-trained classifier top m"] = np.argsort(-self_score, kind="stable")[:m]
    return out


def measure(args) -> dict[str, list[tuple[float, float, float]]]:
    from albat.pipeline.encoders import encoder_from_identity

    results: dict[str, list[tuple[float, float, float]]] = {}
    encoder = None
    for domain in load_domains(args.data, args.domains):
        if not domain.get("in_pool", True):
            continue
        owned = np.array(sorted(i for i, (_, own) in own_domain(args.data, domain).items() if own), np.int64)
        for seed in [int(s) for s in args.seeds.split(",")]:
            exp = args.work / "runs" / f"{domain['slug']}-n{args.n_a}-s{seed}-k{args.k}"
            request = build_request({"query": {"text_column": "text"}}, Workdir(exp), args.m, seed)
            store = request.store
            encoder = encoder or encoder_from_identity(store.info["encoder"])
            test = encoder.encode(pq.read_table(exp / "test.parquet").column("text").to_pylist())
            ids = store.all_ids()
            vectors = np.concatenate([np.asarray(store.vectors(i)) for i in store.shard_indices()])
            blocked = np.isin(ids, request.blocked_ids)
            position = np.argsort(ids)
            chosen: dict[str, np.ndarray] = {}
            for name, (method, options) in METHODS.items():
                started = time.perf_counter()
                result = get_method(method, **options).select(request)
                kept = result.ids[result.keep]
                chosen[name] = position[np.searchsorted(ids[position], kept)]
                print(f"{domain['slug']} seed {seed} {name}: {time.perf_counter() - started:.1f} s", flush=True)
            oracle_pool = np.nonzero(np.isin(ids, owned) & ~blocked)[0]
            chosen["oracle (random rows of the own source)"] = np.random.default_rng([seed, 3]).choice(
                oracle_pool, args.m, replace=False)
            chosen.update(analysis_selections(request, vectors, blocked, args.m, seed))
            for name, rows in chosen.items():
                picked = vectors[rows]
                results.setdefault(name, []).append((purity(ids[rows], owned), mean_pairwise_cosine(picked),
                                                     coverage(test, picked)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/select_fifth"))
    parser.add_argument("--work", type=Path, default=Path("work/bench_lm_fifth"), help="bench_lm's work directory")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--section", default="proxies")
    parser.add_argument("--domains", default="")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--n-a", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--m", type=int, default=128)
    args = parser.parse_args()
    results = measure(args)
    rows = [[name, f"{np.mean([r[0] for r in v]):.3f}", f"{np.mean([r[1] for r in v]):.3f}",
             f"{np.mean([r[2] for r in v]):.4f}", len(v)] for name, v in results.items()]
    body = (f"Selections of m = {args.m} rows for n_A = {args.n_a} adaptation texts (k = {args.k}), on the query "
            "cells of the language-model track; mean over in-pool domains and seeds. Purity: share from the "
            "target's own source (the oracle's is 1 by construction). Mean cosine: over distinct pairs of the "
            "selection (lower: more varied). Coverage: mean over the held-out target texts of the cosine to the "
            "nearest selected row. No judge is trained: these say where a selection sits against the oracle, "
            "not whether it helps.\n\n"
            + markdown_table(["selection", "purity", "mean cosine", "coverage", "cells"], rows))
    write_section(args.out, args.section, "Selection proxies (no judge): purity, variety, coverage", body)


if __name__ == "__main__":
    main()
