"""Selection rules tried as prototypes on the language-model track, outside the product: each rule is a
function of the query stage's tables (pairs, blocked ids, adaptation vectors) that returns m ids, and
every selection is trained and scored exactly as `benchmarks/bench_lm.py` trains its arms (its
`adapt_and_measure`, the same backbone LM, run folders, steps, seeds and test texts). Ideas that earn
their place move into `pipeline/methods/` and are measured again through the CLI by bench_lm.

Rules: `knn` (the reference), `oracle` (m random in-domain pool rows), `fl`/`fl10` (facility location
with nearest-cosine target weights, T = 0.05/0.1: the product's `pipeline.methods.facility` on the
dense graph), `flq` (per-example weights), `dpp` (greedy MAP of a k-DPP, quality exp(rel/2T), cosine
kernel), `veto` (knn's round-robin without the rows the `lm` surrogate's reducible loss calls
harmful, red ≤ 0), `clf`/`clf_rr`/`clf_s` (the classifier's log-odds: top m, ordered inside knn's
round-robin, a Gumbel draw).

    python -m benchmarks.lm_rules --domains wordnet_noun_plant,foldoc --ratios 8 --seeds 0,1,2 --rules knn,fl,dpp
    python -m benchmarks.lm_rules --report-only --out BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from albat.pipeline.methods.knn import round_robin_order
from albat.stores.embedding_store import EmbeddingStore
from benchmarks import bench_lm
from benchmarks.bench_select import load_domains, run
from benchmarks.report import markdown_table, write_section


def load_cell(exp: Path):
    q = exp / "tasks/default/query"
    pairs = pq.read_table(q / "candidate_pairs.parquet").to_pydict()
    pairs = {k: np.asarray(v) for k, v in pairs.items()}
    blocked = pq.read_table(q / "blocked.parquet").column("id").to_numpy()
    adapt_vec = np.load(q / "adaptation.npy", allow_pickle=False)
    return pairs, blocked, adapt_vec


# ---------------------------------------------------------------- rules: (pairs, ctx) -> (ids, weights)
def rule_knn(P, ctx, m):
    allowed = ~np.isin(P["candidate_id"], ctx["blocked"])
    order = round_robin_order(P["query_idx"], P["rank"], P["candidate_id"], allowed)[:m]
    return P["candidate_id"][order], np.ones(m)


def rule_veto(P, ctx, m, quantile=0.0):
    """knn's round-robin, skipping candidates whose LM reducible loss is below the pool's quantile."""
    red = ctx["reducible"]()
    allowed = ~np.isin(P["candidate_id"], ctx["blocked"])
    cut = np.quantile(np.array(list(red.values())), quantile) if quantile > 0 else 0.0
    ok = np.array([red.get(int(i), -np.inf) > cut for i in P["candidate_id"]])
    order = round_robin_order(P["query_idx"], P["rank"], P["candidate_id"], allowed & ok)[:m]
    return P["candidate_id"][order], np.ones(len(order))


def rule_fl(P, ctx, m, temp=0.05, per_query=False):
    """Facility location over the pool (`pipeline.methods.facility`, dense graph): nearest-cosine target
    weights, or each adaptation example's softmax mass (`per_query`)."""
    from albat.pipeline.methods.facility import example_mass_weights, facility_location, neighbour_graph, target_weights

    ids = selectable(P, ctx)
    vec = ctx["vectors"](ids)
    cos = vec @ ctx["adapt_vec"].T
    w = example_mass_weights(cos, temp) if per_query else target_weights(cos.max(1), temp)
    idx, sim = neighbour_graph(vec, len(ids))
    return ids[facility_location(idx, sim, w, m).order], np.ones(m)


def rule_dpp(P, ctx, m, temp=0.05, eps=1e-3):
    """Greedy MAP of a k-DPP with L = diag(q) (XXᵀ + εI) diag(q), q = exp(rel / (2T)) (Chen et al. 2018)."""
    ids = selectable(P, ctx)
    X = ctx["vectors"](ids)
    rel = (X @ ctx["adapt_vec"].T).max(1)
    q = np.exp((rel - rel.max()) / (2 * temp))
    L = (q[:, None] * (X @ X.T + eps * np.eye(len(ids)))) * q[None, :]
    n = len(ids)
    c = np.zeros((n, m)); d2 = np.diag(L).copy(); chosen = []
    for t in range(m):
        d2m = d2.copy(); d2m[chosen] = -np.inf
        j = int(np.argmax(d2m)); chosen.append(j)
        e = (L[j] - c[:, :t] @ c[j, :t]) / np.sqrt(max(d2[j], 1e-300))
        c[:, t] = e; d2 = d2 - e ** 2
    return ids[chosen], np.ones(m)


def rule_oracle(P, ctx, m):
    own = ctx["own"]
    allowed = np.array(sorted(i for i, (_, o) in own.items() if o and i not in set(ctx["blocked"].tolist())))
    return np.random.default_rng([ctx["seed"], m]).choice(allowed, size=m, replace=False), np.ones(m)


def clf_scores(P, ctx):
    from albat.pipeline.methods.classifier import fit_classifier, log_odds, sample_negatives
    ids = selectable(P, ctx)
    neg = sample_negatives(ctx["store"], ctx["blocked"], len(ctx["adapt_vec"]), 0, ctx["seed"])
    model = fit_classifier(ctx["adapt_vec"], neg, 1.0, ctx["seed"])
    return ids, log_odds(model, ctx["vectors"](ids))


def rule_clf(P, ctx, m, mode="top"):
    ids, lo = clf_scores(P, ctx)
    if mode == "top":
        top = np.lexsort((ids, -lo))[:m]
        return ids[top], np.ones(m)
    if mode == "threshold":  # a uniform draw among the rows the classifier calls target (log-odds >= 0)
        order = np.random.default_rng([ctx["seed"], 12]).permutation(len(ids))
        rank = np.where(lo[order] >= 0, np.inf, lo[order])  # target-like rows tie, so they keep the random order
        pick = order[np.argsort(-rank, kind="stable")[:m]]
        return ids[pick], np.ones(m)
    if mode == "sample":
        key = lo + np.random.default_rng([ctx["seed"], 11]).gumbel(size=len(lo))
        return ids[np.argsort(-key)[:m]], np.ones(m)
    from albat.pipeline.methods.coverage import covered_rows
    rows, _, _ = covered_rows(P["query_idx"], P["rank"], P["candidate_id"], ids, lo)
    return ids[rows[:m]], np.ones(m)


RULES = {
    "knn": rule_knn,
    "oracle": rule_oracle,
    "fl": rule_fl,
    "fl10": lambda P, c, m: rule_fl(P, c, m, temp=0.10),
    "flq": lambda P, c, m: rule_fl(P, c, m, per_query=True),
    "dpp": rule_dpp,
    "veto": rule_veto,
    "clf": rule_clf,
    "clf_rr": lambda P, c, m: rule_clf(P, c, m, "rr"),
    "clf_s": lambda P, c, m: rule_clf(P, c, m, "sample"),
    "clf_t": lambda P, c, m: rule_clf(P, c, m, "threshold"),
}


def selectable(P, ctx) -> np.ndarray:
    return np.unique(P["candidate_id"][~np.isin(P["candidate_id"], ctx["blocked"])])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/select_fifth"))
    ap.add_argument("--store-work", type=Path, default=Path("work/bench_fifth"))
    ap.add_argument("--work", type=Path, default=Path("work/bench_lm_fifth"))
    ap.add_argument("--results", type=Path, default=Path("work/bench_lm_fifth/rules.jsonl"))
    ap.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--domains", default="wordnet_noun_plant")
    ap.add_argument("--n-a", type=int, default=16)
    ap.add_argument("--ratios", default="8")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--rules", default="knn")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--test-texts", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not args.report_only:
        run_rules(args)
    report(args)


def run_rules(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    trainer = bench_lm._script("train_lora")
    model = sorted((args.work / "backbone").glob("*/albat_backbone.json"))[0].parent
    store = EmbeddingStore(args.store_work / "backbone" / "store")
    done = set()
    if args.results.exists():
        done = {json.dumps(json.loads(l)["key"]) for l in args.results.read_text().splitlines() if l.strip()}
    for domain in load_domains(args.data, args.domains):
        slug = domain["slug"]
        adapt = pq.read_table(args.data / domain["adapt"])
        test = pq.read_table(args.data / domain["test"]).column("text").to_pylist()[: args.test_texts]
        own = bench_lm.own_domain(args.data, domain) if domain.get("in_pool", True) else None
        for ratio in [int(r) for r in args.ratios.split(",")]:
            for seed in [int(s) for s in args.seeds.split(",")]:
                m, k = ratio * args.n_a, max(args.k, 2 * ratio)
                rows = np.sort(np.random.default_rng([seed, args.n_a]).choice(adapt.num_rows, args.n_a, replace=False))
                exp = bench_lm.experiment_dir(args.work, args.store_work, f"{slug}-n{args.n_a}-s{seed}-k{k}")
                if not (exp / "adaptation.parquet").exists():
                    pq.write_table(adapt.take(rows), exp / "adaptation.parquet")
                    pq.write_table(pq.read_table(args.data / domain["test"]).slice(0, args.test_texts), exp / "test.parquet")
                run("query", "--work", exp, "--adaptation", exp / "adaptation.parquet", "--adaptation-pair-column",
                    "query", "--exclude", exp / "test.parquet", "--k", k, "--quiet")
                torch.set_num_threads(args.threads)
                P, blocked, adapt_vec = load_cell(exp)
                adapt_texts = adapt.take(rows).column("text").to_pylist()
                cache: dict = {}

                def reducible():
                    if "red" not in cache:
                        cache["red"] = lm_reducible(model, adapt_texts, P, blocked, store, seed)
                    return cache["red"]
                ctx = {"store": store, "own": own, "blocked": blocked, "adapt_vec": adapt_vec, "seed": seed, "reducible": reducible,
                       "vectors": lambda ids: store.vectors_for_ids(np.asarray(ids, np.int64)).astype(np.float64)}
                for name in args.rules.split(","):
                    key = {"domain": slug, "n_a": args.n_a, "m": m, "seed": seed, "rule": name, "steps": args.steps}
                    if json.dumps(key) in done or (name == "oracle" and own is None):
                        continue
                    t0 = time.perf_counter()
                    ids, w = RULES[name](P, ctx, m)
                    sel_s = time.perf_counter() - t0
                    texts_b = store.texts_for_ids(np.asarray(ids, np.int64))
                    wb = w / w.sum() * args.n_a  # λ = 1: backbone mass = n_A
                    texts = adapt_texts + texts_b
                    weights = np.r_[np.ones(args.n_a), wb]
                    ns = argparse.Namespace(steps=args.steps, checkpoints="25,50,100", batch_size=16, lr=2e-3, rank=8,
                                            alpha=16.0, max_length=64)
                    ppl, _, rec = bench_lm.adapt_and_measure(trainer, model, texts, weights, test, ns, seed)
                    share = float(np.mean([own[int(i)][1] for i in ids])) if own else None
                    out = {"key": key, "perplexity": ppl, "curve": rec["curve"], "in_domain": share,
                           "chars": float(np.mean([len(t) for t in texts_b])), "unique": int(len(set(map(int, ids)))),
                           "select_s": round(sel_s, 2), "train_s": rec["train_seconds"]}
                    with args.results.open("a") as f:
                        f.write(json.dumps(out) + "\n")
                    print(json.dumps({**key, "ppl": round(ppl, 2), "in_domain": share, "chars": round(out["chars"], 1)}), flush=True)


def lm_reducible(model, adapt_texts, P, blocked, store, seed, steps=50):
    from albat.pipeline.surrogates.lm import LmSurrogate
    ids = np.unique(P["candidate_id"][~np.isin(P["candidate_id"], blocked)])
    sur = LmSurrogate(model, max_length=64, steps=steps, lr=2e-3, batch_size=16, holdout_fraction=0.0)
    sur.fit(sur.examples(adapt_texts), seed)
    ex = sur.examples(store.texts_for_ids(ids))
    red = sur.losses(ex, "initial") - sur.losses(ex, "adapted")
    return dict(zip(ids.tolist(), red.tolist()))


def report(args) -> None:
    """Per cell, each rule's final perplexity; per budget, each rule's mean difference to knn (same seed,
    same adaptation draw and training) and how often it is lower."""
    records = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    cells: dict[tuple, dict[str, float]] = {}
    for r in records:
        k = r["key"]
        cells.setdefault((k["domain"], k["n_a"], k["m"], k["seed"]), {})[k["rule"]] = r["perplexity"]
    rules = [name for name in RULES if any(name in v for v in cells.values())]
    rows = [[*cell, *(f"{v[name]:.2f}" if name in v else "-" for name in rules)] for cell, v in sorted(cells.items())]
    summary = []
    for m in sorted({cell[2] for cell in cells}):
        for name in rules:
            diffs = [v[name] - v["knn"] for cell, v in cells.items() if cell[2] == m and name in v and "knn" in v]
            if diffs and name != "knn":
                summary.append([m, name, len(diffs), f"{np.mean(diffs):+.2f}", f"{np.std(diffs):.2f}",
                                sum(d < 0 for d in diffs)])
    body = ["Prototype selection rules on the language-model track (`benchmarks/lm_rules.py`): final held-out "
            "perplexity (lower is better) after bench_lm's LoRA run on the n_A adaptation texts plus each rule's m rows "
            f"({records[0]['key']['steps'] if records else '-'} steps, same seeds, draws and test texts as bench_lm). "
            f"{len(records)} runs.", "",
            markdown_table(["domain", "n_A", "m", "seed", *rules], rows), "",
            "Each rule minus knn in the same cell (negative: lower perplexity than knn):", "",
            markdown_table(["m", "rule", "cells", "mean − knn", "std", "cells below knn"], summary)]
    write_section(args.out, "lm-rules", "Language-model track: prototype selection rules (lm-rules)", "\n".join(body))


if __name__ == "__main__":
    main()
