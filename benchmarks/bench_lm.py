"""The language-model track: LoRA-adapt a backbone LM on the adaptation texts plus each method's
selection, and measure held-out target-domain perplexity (the paper's language-generation setting).

Data: `scripts/fetch_select_bench.py` (the 135k-text backbone pool and three held-out target domains).
Backbone: `scripts/pretrain_lm.py` pre-trains a few-million-parameter Llama and its BPE tokenizer on
the pool texts, once, cached by content hash; `--model DIR` points the same run at any local
Hugging Face causal-LM checkpoint instead.

For each domain, n_A and seed: n_A adaptation texts are drawn; `albat query` retrieves candidates
from the MiniLM backbone store (the test split passed as --exclude); for each method `albat filter`
selects m = ratio·n_A rows (`albat` and `gradalign` with the `lm` surrogate on the same backbone LM)
and `albat emit` writes the shard set. `scripts/train_lora.py` then trains LoRA on those shards with
albat_weight as the per-example loss weight (same steps, batch and seed for every method) and we
measure perplexity on the first 300 of the domain's 600 test texts, and the relative distance of the adapter's
ΔW = B·A to the one trained on the full target data (all 512 adaptation texts), the paper's
diagnostic. Results append to WORK/results.jsonl, so a rerun resumes.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from benchmarks.bench_select import build_stores, finished_keys, load_domains, run
from benchmarks.report import markdown_table, save_figure, write_section

METHODS = ["none", "random", "knn", "dsir", "gradalign", "albat", "oracle"]
REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def experiment_dir(work: Path, store_work: Path, name: str) -> Path:
    """A run folder whose store and index are links to the shared MiniLM backbone store."""
    exp = work / "runs" / name
    exp.mkdir(parents=True, exist_ok=True)
    for part in ("store", "index"):
        if not (exp / part).exists():
            (exp / part).symlink_to((store_work / "backbone" / part).resolve())
    return exp


def lora_options(args) -> dict[str, Any]:
    return dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, rank=args.rank, alpha=args.alpha,
                max_length=args.max_length)


def surrogate_options(args, model: Path) -> list[str]:
    opts = {"surrogate": "lm", "model": str(model), "steps": args.surrogate_steps, "batch_size": args.batch_size,
            "lr": args.lr, "lora_rank": args.rank, "lora_alpha": args.alpha, "max_length": args.max_length,
            "projection_dim": args.projection_dim}
    return [x for k, v in opts.items() for x in ("--method-option", f"{k}={v}")]


def oracle_texts(pool: dict[int, tuple[str, bool]], adaptation: list[str], blocked: np.ndarray, m: int,
                 seed: int) -> tuple[list[str], np.ndarray]:
    """The reference arm: m random pool texts of the target's own domain (not blocked), weighted as
    `albat emit` weighs a selection (adaptation rows 1, backbone rows λ·n_A/m with λ = 1)."""
    from pipeline.emit import backbone_weights

    blocked_ids = set(blocked.tolist())
    allowed = np.array(sorted(i for i, (_, own) in pool.items() if own and i not in blocked_ids))
    chosen = np.random.default_rng([seed, m]).choice(allowed, size=min(m, len(allowed)), replace=False)
    texts = adaptation + [pool[int(i)][0] for i in chosen]
    return texts, np.concatenate([np.ones(len(adaptation)), backbone_weights(np.ones(len(chosen)), len(adaptation), 1.0)])


def adapt_and_measure(trainer, model: Path, texts: list[str], weights: np.ndarray, test: list[str], args,
                      seed: int) -> tuple[float, np.ndarray, float]:
    """(test perplexity, ΔW, training seconds) of LoRA trained on the weighted texts."""
    started = time.perf_counter()
    adapted, tokenizer, _ = trainer.train_lora(model, texts, weights, seed=seed, **lora_options(args))
    ppl = trainer.perplexity(adapted, tokenizer, test, args.max_length)
    return ppl, trainer.lora_delta(adapted), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/select"))
    parser.add_argument("--work", type=Path, default=Path("work/bench_lm"))
    parser.add_argument("--store-work", type=Path, default=Path("work/bench_select"),
                        help="where the MiniLM backbone store and index live (shared with bench-select)")
    parser.add_argument("--model", type=Path, help="a local causal-LM checkpoint (default: pre-train our own)")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--sizes", default="16,64,256")
    parser.add_argument("--ratio", type=int, default=2, help="budget m = ratio * n_A")
    parser.add_argument("--k", type=int, default=16, help="neighbours retrieved per adaptation text")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--domains", default="", help="comma-separated slugs (default: all)")
    parser.add_argument("--steps", type=int, default=100, help="LoRA steps of every arm")
    parser.add_argument("--surrogate-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--projection-dim", type=int, default=1024)
    parser.add_argument("--test-texts", type=int, default=300)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()

    domains = load_domains(args.data, args.domains)
    results_path = args.work / "results.jsonl"
    if not args.report_only:
        args.work.mkdir(parents=True, exist_ok=True)
        model = args.model or Path(_script("pretrain_lm").pretrain_backbone(
            args.data / "pool.parquet", "text", args.work / "backbone"))
        run_all(args, model, domains, results_path)
    report(args, results_path)


def run_all(args, model: Path, domains: list[dict], results_path: Path) -> None:
    trainer = _script("train_lora")
    build_stores(args.data, args.store_work, json.loads((args.data / "domains.json").read_text()))
    done = finished_keys(results_path)
    seeds = [int(s) for s in args.seeds.split(",")]
    full_delta: dict[tuple[str, int], np.ndarray] = {}
    with results_path.open("a") as out:
        def record(key: dict, **values: Any) -> None:
            out.write(json.dumps({"key": key, **values}) + "\n")
            out.flush()
            print(json.dumps({**key, **{k: v for k, v in values.items() if not isinstance(v, list)}}), flush=True)

        tests, adapts, owns = {}, {}, {}
        for domain in domains:
            slug = domain["slug"]
            owns[slug] = own_domain(args.data, domain)
            adapts[slug] = pq.read_table(args.data / domain["adapt"])
            tests[slug] = pq.read_table(args.data / domain["test"]).column("text").to_pylist()[: args.test_texts]
            key = {"domain": slug, "method": "backbone", "model": str(model)}
            if json.dumps(key) not in done:
                loaded, tokenizer = trainer.load_causal_lm(model)
                record(key, perplexity=trainer.perplexity(loaded, tokenizer, tests[slug], args.max_length))
            for seed in seeds:  # the reference: LoRA on the full target data (all adaptation texts)
                texts = adapts[slug].column("text").to_pylist()
                delta_path = args.work / "full" / f"{slug}-s{seed}.npy"
                key = {"domain": slug, "method": "full", "seed": seed, "model": str(model)}
                if json.dumps(key) not in done or not delta_path.exists():
                    ppl, delta, seconds = adapt_and_measure(trainer, model, texts, np.ones(len(texts)), tests[slug],
                                                            args, seed)
                    delta_path.parent.mkdir(parents=True, exist_ok=True)
                    np.save(delta_path, delta)
                    record(key, perplexity=ppl, train_seconds=seconds, rows=len(texts))
                full_delta[(slug, seed)] = np.load(delta_path, allow_pickle=False)
        for n_a in [int(x) for x in args.sizes.split(",")]:  # smallest first: a partial run covers every domain
            for domain in domains:
                slug = domain["slug"]
                for seed in seeds:
                    keys = {m: {"domain": slug, "n_a": n_a, "m": args.ratio * n_a, "seed": seed, "method": m,
                                "model": str(model)} for m in args.methods.split(",")}
                    pending = [m for m, key in keys.items() if json.dumps(key) not in done]
                    if not pending:
                        continue
                    rows = np.sort(np.random.default_rng([seed, n_a]).choice(adapts[slug].num_rows, n_a, replace=False))
                    exp = experiment_dir(args.work, args.store_work, f"{slug}-n{n_a}-s{seed}")
                    pq.write_table(adapts[slug].take(rows), exp / "adaptation.parquet")
                    pq.write_table(pq.read_table(args.data / domain["test"]), exp / "test.parquet")
                    run("query", "--work", exp, "--adaptation", exp / "adaptation.parquet",
                        "--adaptation-pair-column", "query", "--exclude", exp / "test.parquet", "--k", args.k, "--quiet")
                    candidates = pq.read_metadata(exp / "query" / "candidates.parquet").num_rows
                    for method in pending:
                        if method == "oracle":
                            blocked = pq.read_table(exp / "query" / "blocked.parquet").column("id").to_numpy()
                            adaptation = adapts[slug].take(rows).column("text").to_pylist()
                            texts, weights = oracle_texts(owns[slug], adaptation, blocked, args.ratio * n_a, seed)
                            kept, select_seconds = len(texts) - n_a, 0.0
                        else:
                            extra = surrogate_options(args, model) if method in ("albat", "gradalign") else []
                            run("filter", "--work", exp, "--method", method, "--budget", args.ratio * n_a,
                                "--seed", seed, "--quiet", *extra)
                            summary = json.loads((exp / "_stages" / "filter.json").read_text())["summary"]
                            run("emit", "--work", exp, "--output", f"emitted-{method}", "--quiet")
                            texts, weights = trainer.load_shard_set(exp / f"emitted-{method}")
                            kept, select_seconds = int(summary["kept"]), float(summary["seconds"])
                        ppl, delta, seconds = adapt_and_measure(trainer, model, texts, weights, tests[slug], args, seed)
                        full = full_delta[(slug, seed)]
                        record(keys[method], perplexity=ppl, kept=kept, rows=len(texts), select_seconds=select_seconds,
                               train_seconds=seconds, candidates=candidates,
                               distance_to_full=float(np.linalg.norm(delta - full) / max(np.linalg.norm(full), 1e-12)))


def in_domain_shares(args, records: list[dict]) -> dict[str, list[float]]:
    """Per method, the share of selected backbone rows from the target's own domain, read back from
    the emitted shard sets still in WORK/runs (oracle: 1 by construction; none: no selection)."""
    domains = {d["slug"]: d for d in load_domains(args.data, "")}
    owned: dict[str, set[int]] = {}
    out: dict[str, list[float]] = {}
    for r in records:
        k = r["key"]
        shards = args.work / "runs" / f"{k['domain']}-n{k.get('n_a')}-s{k.get('seed')}" / f"emitted-{k['method']}"
        if "n_a" not in k or not (shards / "manifest.json").exists():
            continue
        if k["domain"] not in owned:
            owned[k["domain"]] = {i for i, (_, own) in own_domain(args.data, domains[k["domain"]]).items() if own}
        manifest = json.loads((shards / "manifest.json").read_text())
        ids = [i for s in manifest["shards"] for i in pq.read_table(shards / s["path"], columns=["albat_id"])
               .column("albat_id").to_pylist() if i is not None]
        if ids:
            out.setdefault(k["method"], []).append(float(np.mean([i in owned[k["domain"]] for i in ids])))
    return out


def own_domain(data: Path, domain: dict) -> dict[int, tuple[str, bool]]:
    """id -> (text, is of the domain's own source/label) over the backbone pool."""
    table = pq.read_table(data / "pool.parquet", columns=["id", "text", "source", "label"]).to_pydict()
    flt = domain["filter"]
    return {i: (t, src == flt["source"] and (not flt.get("label") or lab == flt["label"]))
            for i, t, src, lab in zip(table["id"], table["text"], table["source"], table["label"])}


def _stats(values: list[float]) -> str:
    v = np.array(values, dtype=float)
    return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f}"


def report(args, results_path: Path) -> None:
    """Mean ± std over seeds per (domain, n_A, method); tables and a plot into BENCHMARKS.md."""
    records = [json.loads(line) for line in results_path.read_text().splitlines()]
    backbone = {r["key"]["domain"]: r["perplexity"] for r in records if r["key"]["method"] == "backbone"}
    full: dict[str, list[float]] = {}
    for r in records:
        if r["key"]["method"] == "full":
            full.setdefault(r["key"]["domain"], []).append(r["perplexity"])
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if "n_a" in r["key"]:
            k = r["key"]
            groups.setdefault((k["domain"], k["n_a"], k["method"]), []).append(r)
    methods = [m for m in METHODS if any(key[2] == m for key in groups)]
    cells = sorted({key[:2] for key in groups})
    ppl_rows, dist_rows, verdicts = [], [], []
    for domain, n_a in cells:
        ppl_rows.append([domain, n_a, f"{backbone.get(domain, float('nan')):.2f}", _stats(full.get(domain, [np.nan]))]
                        + [_stats([r["perplexity"] for r in groups[(domain, n_a, m)]]) if (domain, n_a, m) in groups
                           else "-" for m in methods])
        dist_rows.append([domain, n_a] + [_stats([r["distance_to_full"] for r in groups[(domain, n_a, m)]])
                                          if (domain, n_a, m) in groups else "-" for m in methods])
        means = {m: np.mean([r["perplexity"] for r in groups[(domain, n_a, m)]]) for m in methods
                 if (domain, n_a, m) in groups}
        stds = {m: np.std([r["perplexity"] for r in groups[(domain, n_a, m)]], ddof=1)
                if len(groups[(domain, n_a, m)]) > 1 else 0.0 for m in means}
        baselines = {m: v for m, v in means.items() if m not in ("albat", "oracle")}
        if "albat" in means and baselines:
            best = min(baselines, key=baselines.get)
            diff, sd = means["albat"] - means[best], max(stds["albat"], stds[best])
            gap = (means["random"] - means["oracle"], max(stds["random"], stds["oracle"])) \
                if "random" in means and "oracle" in means else None
            verdicts.append([domain, n_a, f"{diff:+.2f}", best, f"{sd:.2f}",
                             "tie" if abs(diff) <= sd else ("win" if diff < 0 else "loss"),
                             f"{gap[0]:+.2f} (spread {gap[1]:.2f})" if gap else "-",
                             "evidence" if gap and gap[0] > gap[1] else "control"])
    share = in_domain_shares(args, records)
    counts = {v: sum(row[5] == v for row in verdicts) for v in ("win", "tie", "loss")}
    timing: dict[str, list[dict]] = {}
    for (_, _, method), runs in groups.items():
        timing.setdefault(method, []).extend(runs)
    n = len([r for r in records if "n_a" in r["key"]])
    seeds = sorted({r["key"]["seed"] for r in records if "n_a" in r["key"]})
    body = [f"Held-out target perplexity (lower is better) after LoRA on the n_A adaptation texts plus each method's "
            f"m = {args.ratio}·n_A selection, every arm trained by `scripts/train_lora.py` on the emitted shards "
            f"(albat_weight as the loss weight): {args.steps} steps, batch {args.batch_size}, lr {args.lr}, rank "
            f"{args.rank}, α {args.alpha}, {args.max_length} tokens; mean ± std over seeds {seeds}. `backbone`: no "
            "adapter; `full`: LoRA on all 512 adaptation texts of the domain (the reference). albat and gradalign use "
            f"the `lm` surrogate on the same backbone LM ({args.surrogate_steps} surrogate steps, projection "
            f"{args.projection_dim}). {n} runs"
            + (" (tabulated again by --report-only)." if args.report_only else "."), "",
            markdown_table(["domain", "n_A", "backbone", "full"] + methods, ppl_rows), "",
            "albat minus the best baseline (none, random, knn, dsir, gradalign; lower perplexity is better); a "
            "difference within the larger seed std of the two is a tie. `oracle` (m random pool texts of the target's "
            "own domain) is a reference, not a baseline: a cell is evidence only where random − oracle exceeds their "
            "larger seed std, i.e. where in-domain data visibly helps; otherwise it is a control.", "",
            markdown_table(["domain", "n_A", "albat − best", "best baseline", "spread", "verdict", "random − oracle",
                            "cell"], verdicts), "",
            f"albat against the best baseline: {counts['win']} wins, {counts['tie']} ties, {counts['loss']} losses "
            f"in {len(verdicts)} cells (with {len(seeds)} seeds the spread is a rough yardstick).", "",
            "The paper's diagnostic: relative distance ‖ΔW − ΔW_full‖ / ‖ΔW_full‖ of the adapter's weight change "
            "(ΔW = scaling·B·A over every LoRA layer) to the one trained on the full target data, same seed "
            "(lower is closer):", "",
            markdown_table(["domain", "n_A"] + methods, dist_rows), "",
            "Selection time per call (the filter stage's clock; albat includes its surrogate fit) and LoRA training time:",
            "",
            markdown_table(["method", "select s (mean)", "select s (max)", "candidates (mean)", "train s (mean)",
                            "in-domain share of the selection"],
                           [[m, f"{np.mean([r['select_seconds'] for r in timing[m]]):.2f}",
                             f"{np.max([r['select_seconds'] for r in timing[m]]):.2f}",
                             f"{np.mean([r['candidates'] for r in timing[m]]):.0f}",
                             f"{np.mean([r['train_seconds'] for r in timing[m]]):.1f}",
                             f"{np.mean(share[m]):.2f}" if share.get(m) else "-"] for m in methods if m in timing])]
    plot = plot_results(groups, backbone, full, methods, args.out.parent / "benchmarks" / "lm.png")
    if plot:
        body += ["", f"![perplexity per method]({plot.relative_to(args.out.parent)})"]
    write_section(args.out, "lm", "Language-model track (`make bench-lm`)", "\n".join(body))


def plot_results(groups, backbone, full, methods: list[str], path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    domains = sorted({key[0] for key in groups})
    fig, axes = plt.subplots(1, len(domains), figsize=(5 * len(domains), 3.8), squeeze=False)
    for ax, domain in zip(axes[0], domains):
        sizes = sorted({key[1] for key in groups if key[0] == domain})
        for i, method in enumerate(methods):
            runs = [[r["perplexity"] for r in groups.get((domain, n, method), [])] for n in sizes]
            ax.errorbar(np.array(sizes) * (1 + 0.03 * (i - len(methods) / 2)),
                        [np.mean(v) if v else math.nan for v in runs], [np.std(v) if v else 0 for v in runs],
                        label=method, marker="o", capsize=2)
        if domain in full:
            ax.axhline(np.mean(full[domain]), color="black", linestyle="--", label="full target (512)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("n_A")
        ax.set_ylabel("held-out perplexity")
        ax.set_title(f"{domain} (backbone {backbone.get(domain, math.nan):.0f})")
    axes[0][-1].legend(fontsize=7)
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
