"""Mixture weights on the contrastive track: the same selection emitted with uniform weights and with
`albat mix` (MDE) weights, the same judge; and how well the MDE estimate ranks random mixtures
against the judge's measurement (Spearman), as the MDE paper reports.

For each domain, n_A and seed (the selection benchmark's splits): `albat query`, `albat filter
--method knn` at m = ratio * n_A, then for each grouping (k-means of the vectors, the store's
`source` column) `albat mix`; the judge (bench_select's: the contrastive adapter on the adaptation
pairs + the selection, weighted by each row's mix multiplier) measures held-out Recall@1 and MRR
for uniform weights, the MDE weights, and `--mixtures` seeded random mixtures of the k-means groups.
Results append to WORK/results.jsonl, so a rerun resumes.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from albat.pipeline.mixture import dirichlet_mixtures, mixture_nll, row_multipliers
from benchmarks.bench_select import (build_stores, experiment_dir, finished_keys, fixed_sample, load_domains, pairs_for,
                                     retrieval, run)
from benchmarks.report import markdown_table, write_section

GROUPINGS = {"kmeans": ["--mix-groups", "4"], "source": ["--mix-group-by", "source"]}


def weighted_judge(train, extra, weights, bank, test, distractors, args, seed: int) -> tuple[float, float]:
    from albat.pipeline.surrogates.contrastive import train_adapter

    W, _ = train_adapter(train, bank, steps=args.judge_steps, lr=args.judge_lr, batch_size=64, seed=seed,
                         extra=extra, extra_weight=weights, backbone_weight=args.lam)
    return retrieval(W, test.query, test.doc, distractors)


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 and np.std(ra) and np.std(rb) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/select"))
    parser.add_argument("--work", type=Path, default=Path("work/bench_mix"))
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--sizes", default="16,64")
    parser.add_argument("--ratio", type=int, default=16, help="m = ratio * n_A")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--domains", default="wordnet_noun_plant,wordnet_noun_animal,foldoc")
    parser.add_argument("--mixtures", type=int, default=4, help="random k-means mixtures judged per cell")
    parser.add_argument("--lam", type=float, default=1.0)
    parser.add_argument("--judge-steps", type=int, default=300)
    parser.add_argument("--judge-lr", type=float, default=1e-3)
    parser.add_argument("--distractors", type=int, default=2000)
    parser.add_argument("--section", default="mix")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--reuse-stores", action="store_true", help="use WORK/backbone and WORK/heldout as they are "
                        "(complete stores copied from bench-select's work directory) instead of running embed")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # the judge's small matrices (bench_select --threads)
    results = args.work / "results.jsonl"
    if not args.report_only:
        args.work.mkdir(parents=True, exist_ok=True)
        run_all(args, results)
    report(args, results)


def run_all(args, results: Path) -> None:
    domains = load_domains(args.data, args.domains)
    if args.reuse_stores:  # complete stores copied from another benchmark's work directory (their input mtimes differ)
        from albat.stores.embedding_store import EmbeddingStore

        backbone, heldout = (EmbeddingStore(args.work / part / "store") for part in ("backbone", "heldout"))
        for store in (backbone, heldout):
            store.require_complete()
        run("index", "--work", args.work / "backbone", "--quiet")  # skipped when complete
    else:
        backbone, heldout = build_stores(args.data, args.work, json.loads((args.data / "domains.json").read_text()))
    done = finished_keys(results)
    bank = pairs_for(backbone, fixed_sample(backbone, 256, seed=4321))
    distractors = backbone.vectors_for_ids(fixed_sample(backbone, args.distractors, seed=1234))
    with results.open("a") as out:
        for n_a in [int(x) for x in args.sizes.split(",")]:
            for domain in domains:
                adapt_table, test_table = pq.read_table(args.data / domain["adapt"]), pq.read_table(args.data / domain["test"])
                test = pairs_for(heldout, test_table.column("id").to_numpy())
                for seed in [int(s) for s in args.seeds.split(",")]:
                    key = {"domain": domain["slug"], "n_a": n_a, "m": args.ratio * n_a, "seed": seed}
                    if json.dumps(key) in done:
                        continue
                    rows = np.sort(np.random.default_rng([seed, n_a]).choice(adapt_table.num_rows, n_a, replace=False))
                    adaptation = adapt_table.take(rows)
                    train = pairs_for(heldout, adaptation.column("id").to_numpy())
                    exp = experiment_dir(args.work, f"{domain['slug']}-n{n_a}-s{seed}")
                    pq.write_table(adaptation, exp / "adaptation.parquet")
                    pq.write_table(test_table, exp / "test.parquet")
                    run("query", "--work", exp, "--adaptation", exp / "adaptation.parquet", "--adaptation-pair-column",
                        "query", "--exclude", exp / "test.parquet", "--k", max(32, math.ceil(4 * args.ratio)), "--quiet")
                    run("filter", "--work", exp, "--method", "knn", "--budget", args.ratio * n_a, "--seed", seed, "--quiet")
                    selection = pq.read_table(exp / "tasks/default/filter/selection.parquet")
                    selection = selection.filter(selection.column("keep")).sort_by("selection_rank")
                    ids = selection.column("id").to_numpy()
                    extra = pairs_for(backbone, ids)
                    record = {"key": key, "kept": int(len(ids))}
                    record["uniform"] = weighted_judge(train, extra, None, bank, test, distractors, args, seed)
                    for name, flags in GROUPINGS.items():
                        run("mix", "--work", exp, "--seed", seed, *flags, "--force", "--quiet")
                        summary = json.loads((exp / "tasks/default/_stages/mix.json").read_text())["summary"]
                        groups_table = pq.read_table(exp / "tasks/default/mix/groups.parquet")
                        group_of = dict(zip(groups_table.column("id").to_pylist(), groups_table.column("group").to_pylist()))
                        groups = np.array([group_of[i] for i in ids.tolist()])
                        weights = np.array(list(summary["weights"].values()))
                        mult = row_multipliers(groups, np.ones(len(ids)), weights)
                        record[name] = {"judge": weighted_judge(train, extra, mult, bank, test, distractors, args, seed),
                                        "weights": summary["weights"], "estimate": summary["estimated_loss"],
                                        "estimate_at_shares": summary["estimated_loss_at_shares"],
                                        "seconds": summary["seconds"]}
                        if name == "kmeans" and args.mixtures:
                            log_lik = np.load(exp / "tasks/default/mix/log_lik.npy", allow_pickle=False)
                            tried = dirichlet_mixtures(len(weights), args.mixtures, seed + 100)
                            measured = [weighted_judge(train, extra, row_multipliers(groups, np.ones(len(ids)), w),
                                                       bank, test, distractors, args, seed)[1] for w in tried]
                            record["mixtures"] = {"tried": tried.round(4).tolist(), "mrr": measured,
                                                  "estimate": [mixture_nll(log_lik, w) for w in tried]}
                    out.write(json.dumps(record) + "\n")
                    out.flush()
                    print(json.dumps({k: record[k] for k in ("key", "uniform")}), flush=True)


def report(args, results: Path) -> None:
    records = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    cells: dict[tuple, list[dict]] = {}
    for r in records:
        cells.setdefault((r["key"]["domain"], r["key"]["n_a"], r["key"]["m"]), []).append(r)
    rows, wins = [], {"kmeans": [0, 0, 0], "source": [0, 0, 0]}
    rhos = []

    def ms(values: list[float]) -> str:
        return f"{np.mean(values):.3f} ± {np.std(values):.3f}"

    for (domain, n_a, m), rs in sorted(cells.items()):
        uni = [r["uniform"][1] for r in rs]
        row = [domain, n_a, m, len(rs), ms(uni)]
        for name in GROUPINGS:
            mrr = [r[name]["judge"][1] for r in rs]
            diff, spread = np.mean(mrr) - np.mean(uni), max(np.std(mrr), np.std(uni))
            verdict = 0 if diff > spread else 2 if diff < -spread else 1
            wins[name][verdict] += 1
            row += [ms(mrr), f"{diff:+.3f}", ["win", "tie", "loss"][verdict]]
        for r in rs:
            mix = r.get("mixtures") or {}
            if mix.get("estimate"):
                rhos.append(spearman(mix["estimate"], [-x for x in mix["mrr"]]))
        rows.append(row)
    header = ["domain", "n_A", "m", "seeds", "uniform MRR"] + [h for g in GROUPINGS for h in (f"mix:{g} MRR", "diff", "verdict")]
    finite = [x for x in rhos if math.isfinite(x)]
    body = (f"Command: `python -m benchmarks.bench_mix --data {args.data} --work {args.work} --sizes {args.sizes} "
            f"--ratio {args.ratio} --seeds {args.seeds}`. Method knn; judge as bench-select (300 steps, 1 thread), "
            "each selected row weighted by its mix multiplier (mean 1); MRR mean ± std over seeds; a difference within "
            "the larger std is a tie.\n\n" + markdown_table(header, rows) + "\n\n"
            + "".join(f"- mix:{g}: {w[0]} wins, {w[1]} ties, {w[2]} losses against uniform weights\n" for g, w in wins.items())
            + (f"- Spearman of the MDE estimate against measured MRR (lower loss should mean higher MRR) over "
               f"{args.mixtures} random k-means mixtures per run: mean {np.mean(finite):+.2f} over {len(finite)} runs "
               f"(min {min(finite):+.2f}, max {max(finite):+.2f})\n" if finite else ""))
    write_section(args.out, args.section, "Mixture weights (`albat mix`) on the contrastive track", body)


if __name__ == "__main__":
    main()
