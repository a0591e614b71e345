"""Mixture weights on the language-model track: the same knn selection emitted with uniform weights and
with `albat mix` (MDE, lm experts) weights, the same LoRA training; and how well the MDE estimate ranks
random mixtures against measured perplexity (Spearman), as the MDE paper reports.

Per domain and seed (bench_lm's splits and run folders, so the query stage is shared with it):
`albat filter --method knn` at m = ratio * n_A, `albat emit` (uniform), `albat mix --mix-surrogate lm`
(k-means groups of the selection, one LoRA expert per group on the benchmark's backbone LM), `albat
emit` again (MDE weights), then `--mixtures` seeded random mixtures of the same groups applied to the
uniform set's backbone rows. Every arm is trained and measured by bench_lm's `adapt_and_measure`
(held-out perplexity, the none → full gap from bench_lm's own results). Results append to
WORK/mix_results.jsonl, so a rerun resumes.

    python -m benchmarks.bench_mix_lm --data data/select_fifth --store-work work/bench_fifth \\
        --work work/bench_lm_fifth --steps 100 --sizes 16 --ratio 8 --seeds 0,1 --section mix-lm-fifth
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from albat.pipeline.mixture import dirichlet_mixtures, mixture_nll, row_multipliers
from benchmarks.bench_lm import (_script, adapt_and_measure, experiment_dir, gap_closed, load_domains,
                                 reference_perplexity, run)
from benchmarks.bench_mix import spearman
from benchmarks.bench_select import finished_keys
from benchmarks.report import markdown_table, write_section


def shard_rows(shards: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(texts, albat_weight, albat_id, albat_is_adaptation) of an emitted shard set, in shard order."""
    manifest = json.loads((shards / "manifest.json").read_text())
    tables = [pq.read_table(shards / s["path"], columns=["text", "albat_weight", "albat_id", "albat_is_adaptation"])
              for s in manifest["shards"]]
    cols = {c: [v for t in tables for v in t.column(c).to_pylist()] for c in tables[0].column_names}
    return (cols["text"], np.asarray(cols["albat_weight"], np.float64), np.asarray(cols["albat_id"], np.int64),
            np.asarray(cols["albat_is_adaptation"], bool))


def mixed_weights(weights: np.ndarray, ids: np.ndarray, is_adapt: np.ndarray, group_of: dict[int, int],
                  w: np.ndarray) -> np.ndarray:
    """The uniform set's weights with its backbone rows re-weighted to the mixture w (total kept)."""
    out = weights.copy()
    backbone = ~is_adapt
    groups = np.array([group_of[int(i)] for i in ids[backbone]], np.int64)
    out[backbone] = weights[backbone] * row_multipliers(groups, weights[backbone], w)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/select"))
    parser.add_argument("--work", type=Path, default=Path("work/bench_lm"))
    parser.add_argument("--store-work", type=Path, default=Path("work/bench_select"))
    parser.add_argument("--model", type=Path, help="a local causal-LM checkpoint (default: bench_lm's pre-trained one)")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--section", default="mix-lm")
    parser.add_argument("--sizes", default="16")
    parser.add_argument("--ratio", type=int, default=8, help="m = ratio * n_A")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--domains", default="wordnet_noun_plant,wordnet_noun_animal,foldoc")
    parser.add_argument("--groups", type=int, default=4, help="k-means groups of the selection")
    parser.add_argument("--mix-steps", type=int, default=50, help="training steps of each lm expert")
    parser.add_argument("--mixtures", type=int, default=3, help="random mixtures trained per cell")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--checkpoints", default="25,50,100,200")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--test-texts", type=int, default=300)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = args.work / "mix_results.jsonl"
    if not args.report_only:
        run_all(args, results)
    report(args, results)


def default_model(args) -> Path:
    if args.model:
        return args.model
    found = sorted((args.work / "backbone").glob("*/albat_backbone.json"))
    if not found:
        raise SystemExit(f"no backbone LM under {args.work / 'backbone'}: run bench_lm first (it pre-trains one) "
                         "or pass --model DIR")
    return found[-1].parent


def run_all(args, results: Path) -> None:
    trainer = _script("train_lora")
    model = default_model(args)
    done = finished_keys(results)
    with results.open("a") as out:
        for n_a in [int(x) for x in args.sizes.split(",") if x]:
            for domain in load_domains(args.data, args.domains):
                slug, m = domain["slug"], args.ratio * n_a
                adapt = pq.read_table(args.data / domain["adapt"])
                test = pq.read_table(args.data / domain["test"]).column("text").to_pylist()[: args.test_texts]
                for seed in [int(s) for s in args.seeds.split(",")]:
                    key = {"domain": slug, "n_a": n_a, "m": m, "seed": seed, "steps": args.steps, "model": str(model),
                           "groups": args.groups, "mix_steps": args.mix_steps}
                    if json.dumps(key) in done:
                        continue
                    k = max(args.k, 2 * args.ratio)
                    exp = experiment_dir(args.work, args.store_work, f"{slug}-n{n_a}-s{seed}-k{k}")
                    if not (exp / "adaptation.parquet").exists():
                        rows = np.sort(np.random.default_rng([seed, n_a]).choice(adapt.num_rows, n_a, replace=False))
                        pq.write_table(adapt.take(rows), exp / "adaptation.parquet")
                        pq.write_table(pq.read_table(args.data / domain["test"]).slice(0, args.test_texts),
                                       exp / "test.parquet")
                    run("query", "--work", exp, "--adaptation", exp / "adaptation.parquet",
                        "--adaptation-pair-column", "query", "--exclude", exp / "test.parquet", "--k", k, "--quiet")
                    run("filter", "--work", exp, "--method", "knn", "--budget", m, "--seed", seed, "--quiet")
                    task = exp / "tasks/default"
                    run("emit", "--work", exp, "--output", f"mixlm-uniform-m{m}", "--quiet")
                    texts, weights, ids, is_adapt = shard_rows(task / f"mixlm-uniform-m{m}")
                    record = {"key": key}
                    ppl, _, rec = adapt_and_measure(trainer, model, texts, weights, test, args, seed)
                    record["uniform"] = {"perplexity": ppl, "curve": rec["curve"]}
                    run("mix", "--work", exp, "--seed", seed, "--mix-groups", args.groups, "--mix-surrogate", "lm",
                        "--mix-model", model, "--mix-steps", args.mix_steps, "--force", "--quiet")
                    summary = json.loads((task / "_stages/mix.json").read_text())["summary"]
                    run("emit", "--work", exp, "--output", f"mixlm-mde-m{m}", "--quiet")
                    mde_texts, mde_weights, _, _ = shard_rows(task / f"mixlm-mde-m{m}")
                    ppl, _, rec = adapt_and_measure(trainer, model, mde_texts, mde_weights, test, args, seed)
                    record["mde"] = {"perplexity": ppl, "curve": rec["curve"], "weights": summary["weights"],
                                     "estimate": summary["estimated_loss"], "seconds": summary["seconds"],
                                     "total_weight": float(mde_weights.sum()), "uniform_total": float(weights.sum())}
                    groups_table = pq.read_table(task / "mix/groups.parquet")
                    group_of = dict(zip(groups_table.column("id").to_pylist(), groups_table.column("group").to_pylist()))
                    log_lik = np.load(task / "mix/log_lik.npy", allow_pickle=False)
                    tried = dirichlet_mixtures(len(summary["weights"]), args.mixtures, seed + 100)
                    measured = [adapt_and_measure(trainer, model, texts, mixed_weights(weights, ids, is_adapt, group_of, w),
                                                  test, args, seed)[0] for w in tried]
                    record["mixtures"] = {"tried": tried.round(4).tolist(), "perplexity": measured,
                                          "estimate": [mixture_nll(log_lik, w) for w in tried]}
                    out.write(json.dumps(record) + "\n")
                    out.flush()
                    print(json.dumps({"key": key, "uniform": record["uniform"]["perplexity"],
                                      "mde": record["mde"]["perplexity"]}), flush=True)


def report(args, results: Path) -> None:
    records = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    records = [r for r in records if r["key"]["steps"] == args.steps]
    lm = [json.loads(line) for line in (args.work / "results.jsonl").read_text().splitlines()] \
        if (args.work / "results.jsonl").exists() else []
    full = {(r["key"]["domain"], r["key"]["seed"]): r for r in lm
            if r["key"]["method"] == "full" and r["key"].get("steps") == args.steps}
    none = {(r["key"]["domain"], r["key"]["n_a"], r["key"]["seed"]): r["perplexity"] for r in lm
            if r["key"]["method"] == "none" and r["key"].get("steps") == args.steps and "n_a" in r["key"]}
    cells: dict[tuple, list[dict]] = {}
    for r in records:
        cells.setdefault((r["key"]["domain"], r["key"]["n_a"], r["key"]["m"]), []).append(r)

    def ms(values: list[float], digits: int = 2) -> str:
        v = [x for x in values if x is not None and math.isfinite(x)]
        return f"{np.mean(v):.{digits}f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.{digits}f}" if v else "-"

    rows, verdicts, rhos = [], [0, 0, 0], []
    for (domain, n_a, m), rs in sorted(cells.items()):
        uni = [r["uniform"]["perplexity"] for r in rs]
        mde = [r["mde"]["perplexity"] for r in rs]
        diff = float(np.mean(mde) - np.mean(uni))
        spread = max(np.std(uni, ddof=1) if len(uni) > 1 else 0.0, np.std(mde, ddof=1) if len(mde) > 1 else 0.0)
        verdict = 0 if -diff > spread else 2 if diff > spread else 1
        verdicts[verdict] += 1

        def gaps(arm: str) -> list[float]:
            out = []
            for r in rs:
                ref = reference_perplexity(full, domain, r["key"]["seed"])
                base = none.get((domain, n_a, r["key"]["seed"]))
                if ref is not None and base is not None:
                    out.append(gap_closed(r[arm]["perplexity"], base, ref))
            return out

        for r in rs:
            mix = r["mixtures"]
            rho = spearman(mix["estimate"] + [r["mde"]["estimate"]], mix["perplexity"] + [r["mde"]["perplexity"]])
            if math.isfinite(rho):
                rhos.append(rho)
        rows.append([domain, n_a, m, len(rs), ms(uni), ms(mde), f"{diff:+.2f}", ["win", "tie", "loss"][verdict],
                     ms(gaps("uniform")), ms(gaps("mde")),
                     ms([float(np.mean(r["mixtures"]["perplexity"])) for r in rs])])
    header = ["domain", "n_A", "m", "seeds", "uniform ppl", "MDE ppl", "MDE − uniform", "verdict",
              "gap closed, uniform", "gap closed, MDE", "random mixtures ppl (mean)"]
    body = (f"Command: `python -m benchmarks.bench_mix_lm --data {args.data} --work {args.work} --sizes {args.sizes} "
            f"--ratio {args.ratio} --seeds <seeds> --steps {args.steps} --groups {args.groups} --mix-steps {args.mix_steps} "
            f"--mixtures {args.mixtures}`. Selection: knn at m = {args.ratio}·n_A; `albat mix --mix-surrogate lm` "
            f"({args.groups} k-means groups, one LoRA expert per group, {args.mix_steps} steps each, on the "
            "benchmark's backbone LM); every arm trained by `scripts/train_lora.py` with albat_weight as the loss "
            f"weight ({args.steps} steps, as bench_lm); held-out perplexity, lower is better; mean ± std over seeds; "
            "a difference within the larger std is a tie; gap closed against bench_lm's none and full runs.\n\n"
            + markdown_table(header, rows) + "\n\n"
            + f"- MDE weights against uniform: {verdicts[0]} wins, {verdicts[1]} ties, {verdicts[2]} losses\n"
            + (f"- Spearman of the MDE estimate against measured perplexity (positive: the estimate ranks mixtures "
               f"as training does) over the {args.mixtures} random mixtures and the MDE mixture of each run: mean "
               f"{np.mean(rhos):+.2f} over {len(rhos)} runs (min {min(rhos):+.2f}, max {max(rhos):+.2f})\n"
               if rhos else ""))
    write_section(args.out, args.section, "Mixture weights (`albat mix`) on the language-model track", body)


if __name__ == "__main__":
    main()
