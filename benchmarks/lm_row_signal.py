"""Does the classifier itself tell when random rows would beat its own? A prototype outside the product
(docs/albat-design.md, round sixteen), read from the run folders bench_lm left behind: no LM is trained.

For every run folder `DOMAIN-nN-sSEED-k32` of WORK/runs it refits the product's classifier (the same
negatives, C and seed as `pipeline/methods/classifier.py`) and cross-fits it over 4 folds of the
adaptation examples: each held-out example is scored by the model that did not see it, and each candidate
by the mean of the 4 models. The statistic is the AUC of the held-out examples against the m = 8·n_A
candidates the full model ranks highest: 0.5 where the kept rows look as target-like as real target
examples, 1 where every real example outscores every kept row (the corpus lacks the target). It is
compared, cell by cell, with the paired perplexity difference random − classifier that bench_lm measured
in WORK/results.jsonl (both at λ = 1). `--features ngrams` uses dsir's hashed n-grams instead of the
embeddings.

    python -m benchmarks.lm_row_signal --work work/bench_lm_fifth [--features ngrams]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from albat.pipeline.methods.classifier import feature_rows, fit_classifier, log_odds, negative_positions

FOLDS = 4
BUCKETS = 2 ** 18


def held_out_auc(held: np.ndarray, kept: np.ndarray) -> float:
    """P(a held-out example outscores a kept row), ties counted half (the Mann-Whitney AUC)."""
    held, kept = np.asarray(held, np.float64), np.asarray(kept, np.float64)
    greater = (held[:, None] > kept[None, :]).sum() + 0.5 * (held[:, None] == kept[None, :]).sum()
    return float(greater / (len(held) * len(kept)))


def run_signal(run: Path, features: str, ratio: int) -> dict:
    from albat.stores.embedding_store import EmbeddingStore

    query = run / "tasks/default/query"
    adaptation = pq.read_table(query / "adaptation.parquet")
    blocked = pq.read_table(query / "blocked.parquet").column("id").to_numpy()
    store = EmbeddingStore(run / "store")
    ids = np.unique(pq.read_table(query / "candidates.parquet").column("candidate_id").to_numpy())
    ids = ids[~np.isin(ids, blocked)]
    column = store.info.get("text_column")
    reads_text = features != "embedding"
    n = adaptation.num_rows
    seed = int(re.search(r"-s(\d+)-", run.name).group(1))
    pos = feature_rows(np.load(query / "adaptation.npy", allow_pickle=False), adaptation.column("text").to_pylist() if reads_text else None,
                       features, BUCKETS)
    negatives = negative_positions(store, blocked, n, 0, seed)
    neg = feature_rows(store.vectors_at(negatives), store.texts_at(negatives, column) if reads_text else None,
                       features, BUCKETS)
    cand = feature_rows(store.vectors_for_ids(ids), store.texts_for_ids(ids, column) if reads_text else None,
                        features, BUCKETS)
    top = np.argsort(-log_odds(fit_classifier(pos, neg, 1.0, seed), cand), kind="stable")[: ratio * n]
    fold = np.arange(n) % FOLDS
    held, cand_score = [], np.zeros(len(ids))
    for f in range(FOLDS):
        model = fit_classifier(pos[np.nonzero(fold != f)[0]], neg, 1.0, seed)
        held.append(log_odds(model, pos[np.nonzero(fold == f)[0]]))
        cand_score += log_odds(model, cand) / FOLDS
    source = store.column_for_ids(ids[top], "source")
    return {"auc": held_out_auc(np.concatenate(held), cand_score[top]),
            "own_source": float(np.mean(source == adaptation.column("source")[0].as_py()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("work/bench_lm_fifth"))
    parser.add_argument("--features", default="embedding", choices=("embedding", "ngrams"))
    parser.add_argument("--ratio", type=int, default=8)
    args = parser.parse_args()
    ppl: dict[tuple, dict] = defaultdict(lambda: defaultdict(dict))
    for line in (args.work / "results.jsonl").open():
        rec = json.loads(line)
        key = rec["key"]
        if key.get("m") == args.ratio * key.get("n_a", -1):
            ppl[(key["domain"], key["n_a"])][key["method"]][key["seed"]] = rec["perplexity"]
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for run in sorted((args.work / "runs").glob("*-k32")):
        domain, n = re.match(r"(.+)-n(\d+)-s\d+-k32$", run.name).groups()
        cells[(domain, int(n))].append(run_signal(run, args.features, args.ratio))
    print(f"| target | n_A | kept rows from the target's source | AUC ({args.features}) | random − classifier, paired |")
    print("|---|---|---|---|---|")
    for (domain, n), runs in sorted(cells.items()):
        arms = ppl[(domain, n)]
        seeds = sorted(set(arms["classifier"]) & set(arms["random"]))
        diff = [arms["random"][s] - arms["classifier"][s] for s in seeds]
        paired = f"{statistics.mean(diff):+.1f} ± {statistics.stdev(diff):.1f} ({len(diff)})" if len(diff) > 1 else "-"
        auc = [r["auc"] for r in runs]
        print(f"| {domain} | {n} | {statistics.mean(r['own_source'] for r in runs):.2f} | "
              f"{statistics.mean(auc):.2f} ({min(auc):.2f}–{max(auc):.2f}) | {paired} |")


if __name__ == "__main__":
    main()
