"""Does the selection help adaptation? Every method, the same judge, held-out target retrieval.

Data: `scripts/fetch_select_bench.py` (a 135k-pair backbone pool from WordNet, FOLDOC and Wikipedia;
three target domains, each with an adaptation pool and a 600-pair test split removed from the pool).

For each domain, n_A and seed: n_A adaptation pairs are drawn; `albat query` retrieves candidates
from the backbone store (test pairs passed as --exclude, so their duplicates are blocked); for each
budget m and method, `albat filter` selects; the judge trains the `contrastive` adapter on the
adaptation pairs plus the selection (weight λ), with fixed steps and seed, and measures retrieval of
the test documents (plus fixed backbone distractors) from the test queries: Recall@1 and MRR.
`oracle` (m random pool pairs of the target's own label) and `frozen` (the backbone, no adapter)
are references, not methods. Results are appended to WORK/results.jsonl, so a rerun resumes.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.report import markdown_table, paired_difference, parse_variants, save_figure, write_section
from albat.pipeline.cli import main as albat
from albat.stores.embedding_store import EmbeddingStore

METHODS = ["none", "random", "knn", "dsir", "classifier", "gradalign", "albat", "auto", "oracle"]
EMBED_ARGS = ["--text-column", "text", "--pair-column", "query", "--id-column", "id",
              "--keep-columns", "source,label", "--max-seq-length", "128", "--quiet"]  # runtime: measured (auto)


THREADS = [0]  # --threads: reapplied after every stage (the query stage's encoder sets all cores)


READERS = ("query", "filter", "mix", "emit")  # stages that share the backbone store with other bench processes
RETRY_PAUSE = [15.0]  # seconds before the one retry of a failed reader stage


def run(*args: Any) -> None:
    """`albat ARGS`; SystemExit when it fails. A reader stage that fails is retried once after
    RETRY_PAUSE: while a second benchmark process builds the shared backbone store (embed/index with
    work to do, a writer's lock), a reader stage that starts is refused. Since `embed`/`index` on a
    complete store take only the shared lock (albat.api._lock), that happens only while the store is
    really being built. Stages are atomic, so the retry redoes nothing that finished; a real error fails
    twice."""
    argv = [str(a) for a in args]
    code = albat(argv)
    if code != 0 and argv and argv[0] in READERS:
        print(f"albat {argv[0]} failed; retrying once in {RETRY_PAUSE[0]:g} s (another benchmark process may "
              "hold the shared store for a moment)", flush=True)
        time.sleep(RETRY_PAUSE[0])
        code = albat(argv)
    if code != 0:
        raise SystemExit(f"albat {' '.join(argv)} failed")
    if THREADS[0]:
        import torch
        torch.set_num_threads(THREADS[0])


def backbone_store(folder: Path, pool: Path, embed_args: list[str]) -> None:
    """Embed and index the pool in `folder` (skipped when complete). A second bench process finds it
    locked while another one runs a stage on an experiment linked to it (a shared lock): a completed
    index is then used as it is."""
    from albat.stores.workdir import Workdir

    try:
        run("embed", "--work", folder, "--input", pool, *embed_args)
        run("index", "--work", folder, "--quiet")
    except SystemExit:
        if not Workdir(folder).stage_record("index"):
            raise
        print(f"{folder}: in use by another process and complete; using it as it is", flush=True)


def build_stores(data: Path, work: Path, domains: list[dict],
                 embed_args: list[str] = EMBED_ARGS) -> tuple[EmbeddingStore, EmbeddingStore]:
    """The backbone store + index, and one store holding every domain's adaptation and test pairs."""
    backbone_store(work / "backbone", data / "pool.parquet", embed_args)
    heldout = work / "heldout_input.parquet"
    if not heldout.exists():
        tables = [pq.read_table(data / d[split]) for d in domains for split in ("adapt", "test")]
        pq.write_table(pa.concat_tables(tables), heldout)
    run("embed", "--work", work / "heldout", "--input", heldout, *embed_args)
    return EmbeddingStore(work / "backbone" / "store"), EmbeddingStore(work / "heldout" / "store")


def pairs_for(store: EmbeddingStore, ids: np.ndarray):
    from albat.pipeline.surrogates.contrastive import Pairs

    return Pairs(store.vectors_for_ids(ids, side="pair"), store.vectors_for_ids(ids))


def fixed_sample(store: EmbeddingStore, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return store.ids_at(np.sort(rng.choice(int(store.info["rows"]), size=size, replace=False)))


def retrieval(W, queries: np.ndarray, docs: np.ndarray, distractors: np.ndarray) -> tuple[float, float]:
    """Recall@1 and MRR of query i finding document i among all test documents and the distractors."""
    import torch

    from albat.pipeline.surrogates.contrastive import adapt

    with torch.no_grad():
        q = adapt(torch.from_numpy(queries), W)
        d = adapt(torch.from_numpy(np.concatenate([docs, distractors])), W)
        sims = q @ d.T
        rank = (sims > sims.diagonal()[:, None]).sum(1)  # documents scored above the right one
    return float((rank == 0).float().mean()), float((1.0 / (rank + 1).float()).mean())


def judge_adapter(train, extra, bank, args, seed: int, extra_weight: np.ndarray | None = None):
    """The judge's residual adapter W, trained on the adaptation pairs plus the selection (weight λ·w_b)."""
    from albat.pipeline.surrogates.contrastive import train_adapter

    W, _ = train_adapter(train, bank, steps=args.judge_steps, lr=args.judge_lr, batch_size=64, seed=seed,
                         extra=extra, extra_weight=extra_weight, backbone_weight=args.lam)
    return W


@dataclass
class Track:
    """What differs between the text and the image selection benchmarks: how stores are embedded, how
    the query stage reads the adaptation set, and what the judge's adapter W is scored on
    (`metrics(W, test) -> {"recall1", "mrr", ...}`; None: the text track's query → document retrieval
    among the test documents and the distractors)."""
    embed_args: list[str] = field(default_factory=lambda: list(EMBED_ARGS))
    query_args: list[str] = field(default_factory=lambda: ["--adaptation-pair-column", "query"])
    make_metrics: Any = None  # (args, backbone store) -> metrics(W, test, domain); None: `text_metrics`
    describe: str = ("Held-out target retrieval MRR (test queries against their 600 test documents plus "
                     "{distractors} backbone distractors)")
    title: str = "Selection quality (`make bench-select`)"
    section: str = "select"


def text_metrics(args, backbone: EmbeddingStore):
    """The text track's score of an adapter: query → document retrieval among the test documents and a
    fixed sample of backbone distractors."""
    distractors = backbone.vectors_for_ids(fixed_sample(backbone, args.distractors, seed=1234))

    def metrics(W, test, domain: dict) -> dict[str, float]:
        r1, mrr = retrieval(W, test.query, test.doc, distractors)
        return {"recall1": r1, "mrr": mrr}
    return metrics


def select(method: str, exp: Path, budget: int, seed: int, oracle_pool: np.ndarray, blocked: np.ndarray,
           options: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray, float]:
    """Ids the method keeps, their weights w_b (1 unless the method sets them: `auto` with a λ grid
    carries its chosen λ there) and its selection time (the filter stage's own measurement)."""
    if method == "oracle":
        rng = np.random.default_rng([seed, budget])
        allowed = oracle_pool[~np.isin(oracle_pool, blocked)]
        kept = rng.choice(allowed, size=min(budget, len(allowed)), replace=False)
        return kept, np.ones(len(kept)), 0.0
    extra = [x for o in options.get(method, []) for x in ("--method-option", o)]
    run("filter", "--work", exp, "--method", method, "--budget", budget, "--seed", seed, "--quiet", *extra)
    table = pq.read_table(exp / "tasks/default/filter" / "selection.parquet", columns=["id", "keep", "weight"])
    table = table.filter(table.column("keep"))
    summary = json.loads((exp / "tasks/default/_stages" / "filter.json").read_text())["summary"]
    return table.column("id").to_numpy(), table.column("weight").to_numpy(), float(summary["seconds"])


def load_domains(data: Path, selected: str, outside_pool: bool = True) -> list[dict]:
    """The benchmark's target domains, or the comma-separated slugs of `selected` among them.
    `outside_pool=False` leaves out (unless named) the domains whose source the pool does not hold."""
    path = data / "domains.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no benchmark data there; build it with `make data-select` (data/select_fifth: "
                         "`make data/select_fifth/domains.json`) or pass --data DIR")
    domains = json.loads(path.read_text())
    if selected:
        slugs = [x for x in selected.split(",") if x]
        unknown = sorted(set(slugs) - {d["slug"] for d in domains})
        if unknown:
            raise SystemExit(f"--domains: {', '.join(unknown)} not in {path}; its domains: "
                             f"{', '.join(d['slug'] for d in domains)}")
        return [d for d in domains if d["slug"] in slugs]
    return [d for d in domains if outside_pool or d.get("in_pool", True)]


def finished_keys(results_path: Path) -> set[str]:
    """Keys (as JSON) of the records already in a results.jsonl, so a rerun resumes."""
    if not results_path.exists():
        return set()
    return {json.dumps(r["key"]) for r in map(json.loads, results_path.read_text().splitlines())}


def experiment_dir(work: Path, name: str) -> Path:
    exp = work / "runs" / name
    exp.mkdir(parents=True, exist_ok=True)
    for part in ("store", "index"):
        link = exp / part
        if not link.exists():
            link.symlink_to((work / "backbone" / part).resolve())
    return exp


def build_parser(description: str = __doc__.splitlines()[0]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=Path("data/select"))
    parser.add_argument("--work", type=Path, default=Path("work/bench_select"))
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--sizes", default="16,64,256")
    parser.add_argument("--ratios", default="4,16", help="budgets m as multiples of n_A")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--domains", default="", help="comma-separated slugs (default: all)")
    parser.add_argument("--pool-factor", type=float, default=4.0, help="k = pool_factor * max(m) / n_A (>= 32)")
    parser.add_argument("--lam", type=float, default=1.0, help="λ, the weight of the selected backbone pairs")
    parser.add_argument("--judge-steps", type=int, default=300)
    parser.add_argument("--judge-lr", type=float, default=1e-3)
    parser.add_argument("--distractors", type=int, default=2000)
    parser.add_argument("--albat-option", action="append", default=[], help="KEY=VALUE passed to albat")
    parser.add_argument("--auto-option", action="append", default=[], help="KEY=VALUE passed to auto")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=METHOD:k=v,...",
                        help="a method with options, run and reported under NAME (add NAME to --methods), e.g. "
                        "classifier_t=classifier:draw=target")
    parser.add_argument("--tag", default="", help="label of this configuration in results.jsonl")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); on shared "
                        "cores 1 is several times faster for the judge's small matrices")
    parser.add_argument("--section", default="select", help="BENCHMARKS.md section (and plot) name; a reduced "
                        "benchmark (another --data, fewer sizes) gets its own, e.g. select-fifth")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--ablation", default="", help="comma-separated tags: write one table comparing their albat "
                        "runs with the untagged run's methods, instead of the main report")
    return parser


def main(args: argparse.Namespace | None = None, track: Track | None = None) -> None:
    args = args or build_parser().parse_args()
    domains = load_domains(args.data, args.domains, outside_pool=False)  # the contrastive judge needs an oracle
    results_path = args.work / "results.jsonl"
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
        THREADS[0] = args.threads
    if not args.report_only:
        args.work.mkdir(parents=True, exist_ok=True)
        run_all(args, domains, results_path, track)
    if args.ablation:
        report_ablation(args, results_path, args.ablation.split(","))
    else:
        report(args, results_path, track)


def run_all(args, domains: list[dict], results_path: Path, track: Track | None = None) -> None:
    track = track or Track()
    backbone, heldout = build_stores(args.data, args.work, load_domains(args.data, "", outside_pool=False),
                                     track.embed_args)
    metrics = (track.make_metrics or text_metrics)(args, backbone)
    done = finished_keys(results_path)
    bank = pairs_for(backbone, fixed_sample(backbone, 256, seed=4321))
    pool_labels = pq.read_table(args.data / "pool.parquet", columns=["id", "source", "label"])
    sizes, ratios = [int(x) for x in args.sizes.split(",")], [int(x) for x in args.ratios.split(",")]
    methods = args.methods.split(",")
    variants = parse_variants(args.variant)
    with results_path.open("a") as out:
        prepared = {}
        for domain in domains:
            flt = domain["filter"]
            mask = np.array(pool_labels.column("source").to_pylist()) == flt["source"]
            if flt.get("label"):
                mask &= np.array(pool_labels.column("label").to_pylist()) == flt["label"]
            test_table = pq.read_table(args.data / domain["test"])
            prepared[domain["slug"]] = (pool_labels.column("id").to_numpy()[mask], pq.read_table(args.data / domain["adapt"]),
                                        test_table, pairs_for(heldout, test_table.column("id").to_numpy()))
            test = prepared[domain["slug"]][3]
            key = {"domain": domain["slug"], "method": "frozen", "tag": args.tag}
            if json.dumps(key) not in done:
                import torch
                out.write(json.dumps({"key": key, **metrics(torch.zeros(backbone.dim, backbone.dim), test, domain)}) + "\n")
                out.flush()
        for n_a in sizes:  # smallest adaptation sets first: a partial run still covers every domain
            for domain in domains:
                oracle_pool, adapt_table, test_table, test = prepared[domain["slug"]]
                for seed in [int(s) for s in args.seeds.split(",")]:
                    rows = np.sort(np.random.default_rng([seed, n_a]).choice(adapt_table.num_rows, n_a, replace=False))
                    adaptation = adapt_table.take(rows)
                    train = pairs_for(heldout, adaptation.column("id").to_numpy())
                    exp = experiment_dir(args.work, f"{domain['slug']}-n{n_a}-s{seed}" + (f"-{args.tag}" if args.tag else ""))
                    pending = [(m, r) for r in ratios for m in methods
                               if json.dumps({"domain": domain["slug"], "n_a": n_a, "m": r * n_a, "seed": seed,
                                              "method": m, "tag": args.tag}) not in done]
                    if not pending:
                        continue
                    pq.write_table(adaptation, exp / "adaptation.parquet")
                    pq.write_table(test_table, exp / "test.parquet")
                    k = max(32, math.ceil(args.pool_factor * max(ratios)))
                    run("query", "--work", exp, "--adaptation", exp / "adaptation.parquet", *track.query_args,
                        "--exclude", exp / "test.parquet", "--k", k, "--quiet")
                    blocked = pq.read_table(exp / "tasks/default/query" / "blocked.parquet").column("id").to_numpy()
                    n_candidates = pq.read_metadata(exp / "tasks/default/query" / "candidates.parquet").num_rows
                    for method, ratio in pending:
                        m = ratio * n_a
                        base, options = variants.get(method, (method, None))
                        kept, weights, seconds = select(base, exp, m, seed, oracle_pool, blocked,
                                               {"albat": args.albat_option, "auto": args.auto_option}
                                               if options is None else {base: options})
                        extra = pairs_for(backbone, kept) if len(kept) else None
                        started = time.perf_counter()
                        scores = metrics(judge_adapter(train, extra, bank, args, seed, weights), test, domain)
                        r1, mrr = scores["recall1"], scores["mrr"]
                        in_domain = float(np.isin(kept, oracle_pool).mean()) if len(kept) else float("nan")
                        record = {"key": {"domain": domain["slug"], "n_a": n_a, "m": m, "seed": seed, "method": method,
                                          "tag": args.tag},
                                  **scores, "kept": int(len(kept)), "in_domain": in_domain,
                                  "select_seconds": seconds, "judge_seconds": time.perf_counter() - started,
                                  "candidates": n_candidates, "k": k, "albat_options": args.albat_option,
                                  **({"auto_options": args.auto_option} if args.auto_option else {}),
                                  **({"variant": f"{variants[method][0]}:{','.join(variants[method][1])}"}
                                     if method in variants else {})}
                        out.write(json.dumps(record) + "\n")
                        out.flush()
                        print(f"{domain['slug']} n_A={n_a} m={m} seed={seed} {method:10s} R@1={r1:.3f} MRR={mrr:.3f} "
                              f"kept={len(kept)} in-domain={in_domain:.2f} select={seconds:.1f}s", flush=True)


def method_columns(groups: dict[tuple, list]) -> list[str]:
    """The methods present in groups keyed (domain, n_A, m, method): METHODS' order, then --variant names."""
    methods = [m for m in METHODS if any(key[3] == m for key in groups)]
    return methods + sorted({key[3] for key in groups} - set(methods))


def report(args, results_path: Path, track: Track | None = None) -> None:
    """Mean ± std over seeds per (domain, n_A, m, method); the table and a plot into BENCHMARKS.md."""
    records = [r for r in map(json.loads, results_path.read_text().splitlines()) if r["key"].get("tag", "") == args.tag]
    frozen = {r["key"]["domain"]: r for r in records if r["key"]["method"] == "frozen"}
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        k = r["key"]
        if k["method"] != "frozen":
            groups.setdefault((k["domain"], k["n_a"], k["m"], k["method"]), []).append(r)
    methods = method_columns(groups)
    header = ["domain", "n_A", "m", "frozen"] + methods
    rows, wins = [], []
    for domain, n_a, m in sorted({key[:3] for key in groups}):
        cells = [domain, n_a, m, f"{frozen[domain]['mrr']:.3f}" if domain in frozen else "-"]
        means = {}
        for method in methods:
            runs = groups.get((domain, n_a, m, method), [])
            if runs:
                values = np.array([r["mrr"] for r in runs])
                means[method] = values.mean()
                cells.append(f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}")
            else:
                cells.append("-")
        rows.append(cells)
        baselines = {k: v for k, v in means.items() if k in METHODS and k not in PRODUCT + ("oracle",)}
        for product in PRODUCT:
            if product in means and baselines:
                best = max(baselines, key=baselines.get)
                wins.append((product, domain, n_a, m, means[product] - baselines[best], best,
                             separation(groups, (domain, n_a, m)), spread(groups, (domain, n_a, m), [product, best])))
    timing = {}
    for (_, _, _, method), runs in groups.items():
        timing.setdefault(method, []).extend(r["select_seconds"] for r in runs)
    dsir_mean = np.mean(timing["dsir"]) if timing.get("dsir") else float("nan")
    timing_rows = [[m, f"{np.mean(timing[m]):.2f}", f"{np.max(timing[m]):.2f}", f"{np.mean(timing[m]) / dsir_mean:.2f}"]
                   for m in methods if m in timing]
    fill: dict[str, list[float]] = {}  # albat keeps *up to* m: how much of the budget each method used
    for (_, _, m, method), runs in groups.items():
        fill.setdefault(method, []).extend(r["kept"] / m for r in runs)
    in_domain = {}
    for (_, _, _, method), runs in groups.items():
        in_domain.setdefault(method, []).extend(r["in_domain"] for r in runs if not math.isnan(r["in_domain"]))
    body = [(track or Track()).describe.format(distractors=args.distractors)
            + f", mean ± std over seeds {args.seeds}; judge: `contrastive` "
            f"adapter, {args.judge_steps} steps, lr {args.judge_lr}, λ = {args.lam}. "
            f"albat options: {' '.join(args.albat_option) or 'defaults'}. {len(records)} records"
            + (f" from {results_path}, tabulated again by --report-only (the runs were `python -m "
               "benchmarks.bench_select` with the same options)" if args.report_only else "") + ".", "",
            markdown_table(header, rows), "",
            "Each of the project's methods (albat, auto) minus the best baseline (none, random, knn, dsir, classifier, "
            "gradalign) at the same budget. A cell is evidence only where the benchmark can see in-domain data at all: "
            "`oracle − random` must exceed the larger of their seed spreads (std); otherwise it is a control. A "
            "difference smaller than the larger seed spread of the method and that baseline is a tie.", "",
            markdown_table(["method", "domain", "n_A", "m", "− best", "best baseline", "spread", "verdict",
                            "oracle − random", "cell"],
                           [[p, d, n, m, f"{diff:+.3f}", b, f"{sd:.3f}", verdict(diff, sd),
                             f"{sep[0]:+.3f} (spread {sep[1]:.3f})" if sep else "-", cell_kind(sep)]
                            for p, d, n, m, diff, b, sep, sd in wins]), "",
            "Win / tie / loss against the best baseline, by kind of cell:", "",
            markdown_table(["method", "evidence cells (W/T/L)", "control cells (W/T/L)", "at or above within spread"],
                           win_counts(wins)), "",
            "Every method and --variant against the best of the *other* baselines of each cell (which changes from "
            "cell to cell: how robust one fixed choice is), with the same tie and evidence rules; the last two "
            "columns pair the runs by seed (same adaptation draw and judge noise): the per-seed differences' mean "
            "against their own std, evidence cells paired the same way:", "",
            markdown_table(["method", "cells", "evidence (W/T/L)", "control (W/T/L)", "mean − best",
                            "paired: evidence (W/T/L)", "paired: control (W/T/L)"],
                           variant_counts({cell: {meth: {r["key"]["seed"]: r["mrr"] for r in groups[(*cell, meth)]}
                                                  for meth in methods
                                                  if (*cell, meth) in groups} for cell in {key[:3] for key in groups}},
                                          [meth for meth in methods if meth not in ("none", "oracle")])), "",
            "Selection time per call (seconds, the filter stage's own clock) and share of kept pairs from the "
            "target's own label:", "",
            markdown_table(["method", "mean s", "max s", "mean / dsir's", "in-domain share", "kept / m (min)"],
                           [row + [f"{np.mean(in_domain[row[0]]):.2f}" if in_domain.get(row[0]) else "-",
                                   f"{np.mean(fill[row[0]]):.2f} ({np.min(fill[row[0]]):.2f})"]
                            for row in timing_rows])]
    by_size: dict[tuple[str, int], list[dict]] = {}
    for (_, n_a, _, method), runs in groups.items():
        if method in ("albat", "auto", "gradalign", "dsir", "classifier"):
            by_size.setdefault((method, n_a), []).extend(runs)
    body += ["", "Cost against pool size (mean over calls; albat's time includes its surrogate fit, which does not "
             "depend on the pool):", "",
             markdown_table(["method", "n_A", "candidates", "seconds", "ms per candidate"],
                            [[m, n, f"{np.mean([r['candidates'] for r in rs]):.0f}",
                              f"{np.mean([r['select_seconds'] for r in rs]):.2f}",
                              f"{1000 * np.mean([r['select_seconds'] / r['candidates'] for r in rs]):.2f}"]
                             for (m, n), rs in sorted(by_size.items())])]
    plot = plot_results(groups, frozen, methods, args.out.parent / "benchmarks" / f"{args.section}{args.tag or ''}.png")
    if plot:
        body += ["", f"![MRR per method]({plot.relative_to(args.out.parent)})"]
    title = (track or Track()).title + ("" if args.section == (track or Track()).section else f", reduced: {args.section}")
    write_section(args.out, f"{args.section}{args.tag}", title + (f" {args.tag}" if args.tag else ""),
                  "\n".join(body))


PRODUCT = ("albat", "auto")


def verdict(diff: float, sd: float) -> str:
    return "tie" if abs(diff) <= sd else ("win" if diff > 0 else "loss")


def cell_kind(sep: tuple[float, float] | None) -> str:
    return "evidence" if sep and sep[0] > sep[1] else "control"


def win_counts(wins: list[tuple]) -> list[list[str]]:
    """Per product method: W/T/L on evidence and control cells, and the share not lost."""
    rows = []
    for product in PRODUCT:
        mine = [w for w in wins if w[0] == product]
        if not mine:
            continue
        counts = {kind: [sum(1 for w in mine if cell_kind(w[6]) == kind and verdict(w[4], w[7]) == v)
                         for v in ("win", "tie", "loss")] for kind in ("evidence", "control")}
        kept = sum(1 for w in mine if verdict(w[4], w[7]) != "loss")
        rows.append([product, "/".join(map(str, counts["evidence"])), "/".join(map(str, counts["control"])),
                     f"{kept} of {len(mine)}"])
    return rows


def _mrrs(groups, cell: tuple, method: str) -> np.ndarray:
    return np.array([r["mrr"] for r in groups.get((*cell, method), [])])


def spread(groups, cell: tuple, methods: list[str]) -> float:
    """The larger seed standard deviation of the methods' MRR in this cell."""
    return max((float(np.std(v, ddof=1)) for m in methods if len(v := _mrrs(groups, cell, m)) > 1), default=0.0)


def separation(groups, cell: tuple) -> tuple[float, float] | None:
    """oracle − random mean MRR and the larger of their spreads: can the judge see in-domain data?"""
    oracle, random_ = _mrrs(groups, cell, "oracle"), _mrrs(groups, cell, "random")
    if not len(oracle) or not len(random_):
        return None
    return float(oracle.mean() - random_.mean()), spread(groups, cell, ["oracle", "random"])


def variant_counts(cells: dict[tuple, dict[str, dict[int, float]]], variants: list[str]) -> list[list[str]]:
    """Per method or variant (runs: seed → MRR), W/T/L against the best other baseline of each cell on
    evidence and control cells, the mean difference, and the same W/T/L paired by seed (`paired_difference`:
    the per-seed differences' mean against their std; evidence: oracle − random paired the same way)."""
    baselines = [m for m in METHODS if m not in PRODUCT + ("oracle",)]
    out = []
    for name in variants:
        tally = {"evidence": [0, 0, 0], "control": [0, 0, 0]}
        paired = {"evidence": [0, 0, 0], "control": [0, 0, 0]}
        diffs = []
        for runs in cells.values():
            present = [b for b in baselines if b in runs and b != name]  # a baseline meets the best of the others
            if name not in runs or not present:
                continue
            values = {m: list(v.values()) for m, v in runs.items()}
            best = max(present, key=lambda b: np.mean(values[b]))
            diff = float(np.mean(values[name]) - np.mean(values[best]))
            sd = max((float(np.std(values[x], ddof=1)) for x in (name, best) if len(values[x]) > 1), default=0.0)
            sep = p_sep = None
            if "oracle" in runs and "random" in runs:
                sep = (float(np.mean(values["oracle"]) - np.mean(values["random"])),
                       max((float(np.std(values[x], ddof=1)) for x in ("oracle", "random") if len(values[x]) > 1),
                           default=0.0))
                p_sep = paired_difference(runs["oracle"], runs["random"])[:2]
            tally[cell_kind(sep)][("win", "tie", "loss").index(verdict(diff, sd))] += 1
            p_diff, p_sd, _ = paired_difference(runs[name], runs[best])
            paired[cell_kind(p_sep)][("win", "tie", "loss").index(verdict(p_diff, p_sd))] += 1
            diffs.append(diff)
        if diffs:
            out.append([name, str(len(diffs)), "/".join(map(str, tally["evidence"])), "/".join(map(str, tally["control"])),
                        f"{np.mean(diffs):+.4f}", "/".join(map(str, paired["evidence"])),
                        "/".join(map(str, paired["control"]))])
    return out


def report_ablation(args, results_path: Path, tags: list[str]) -> None:
    """albat variants (one tag each) beside the untagged run's methods, on the cells the variants ran."""
    cells: dict[tuple, dict[str, list[float]]] = {}
    legend: dict[str, str] = {}
    for r in map(json.loads, results_path.read_text().splitlines()):
        k = r["key"]
        tag = k.get("tag", "")
        if k["method"] == "frozen" or (tag and (tag not in tags or k["method"] not in PRODUCT)):
            continue
        name = tag or k["method"]
        if tag:
            opts = r.get("auto_options") if k["method"] == "auto" else r.get("albat_options")
            legend[tag] = f"{k['method']}: " + (" ".join(opts or []) or "default options") + (
                f", candidate pool k = {r['k']} neighbours per example" if r.get("k", 64) != 64 else "")
        cells.setdefault((k["domain"], k["n_a"], k["m"]), {}).setdefault(name, {})[k["seed"]] = r["mrr"]
    names = [m for m in METHODS if any(m in c for c in cells.values())] + [t for t in tags if t in legend]
    rows = []
    for cell in sorted(c for c, runs in cells.items() if any(t in runs for t in legend)):
        runs = cells[cell]
        values = {n: list(v.values()) for n, v in runs.items()}
        rows.append([*cell] + [f"{np.mean(values[n]):.3f}±{np.std(values[n], ddof=1) if len(values[n]) > 1 else 0:.3f}"
                               if n in runs else "-" for n in names])
    note = ("The variants ran before `tau`'s default moved from 0 to inf: each ran with τ = 0 and ε = 1 unless its "
            "options say otherwise, so `abl-tau0` is their reference." if args.section == "select" else
            "Each variant ran with the defaults of its commit plus the options listed.")
    body = ["Test MRR, mean ± std over seeds. Columns after `oracle` are albat (or auto) variants (tags below); the "
            "others are the main run's methods (albat, auto = current defaults) on the same cells: same adaptation "
            "draws, candidate pools and judge. " + note, "",
            "\n".join(f"- `{t}`: {legend[t]}" for t in tags if t in legend), "",
            markdown_table(["domain", "n_A", "m"] + names, rows), "",
            "Each variant (and the main run's albat and auto) against the best baseline of its cell, as in the main "
            "report (tie: within the larger seed std of the two; evidence: oracle − random beyond their spread); "
            "mean difference over the cells it ran. Each baseline is held to the same test against the best of the "
            "*other* baselines, which changes from cell to cell (how robust a single fixed choice is):", "",
            markdown_table(["variant", "cells", "evidence (W/T/L)", "control (W/T/L)", "mean − best",
                            "paired: evidence (W/T/L)", "paired: control (W/T/L)"],
                           variant_counts(cells, [n for n in names if n != "oracle"]))]
    write_section(args.out, f"{args.section}-ablation", "Selection quality: albat ablation"
                  + ("" if args.section == "select" else f" ({args.section})"), "\n".join(body))


def plot_results(groups, frozen, methods: list[str], path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cells = sorted({key[:3] for key in groups})
    domains = sorted({c[0] for c in cells})
    fig, axes = plt.subplots(1, len(domains), figsize=(5.5 * len(domains), 4), squeeze=False)
    for ax, domain in zip(axes[0], domains):
        configs = [c for c in cells if c[0] == domain]
        x = np.arange(len(configs))
        width = 0.8 / len(methods)
        for i, method in enumerate(methods):
            means = [np.mean([r["mrr"] for r in groups.get((*c, method), [])] or [np.nan]) for c in configs]
            stds = [np.std([r["mrr"] for r in groups.get((*c, method), [])] or [np.nan]) for c in configs]
            ax.bar(x + i * width, means, width, yerr=stds, label=method)
        if domain in frozen:
            ax.axhline(frozen[domain]["mrr"], color="black", linestyle="--", label="frozen")
        values = [r["mrr"] for c in configs for m in methods for r in groups.get((*c, m), [])]
        ax.set_ylim(min(values) - 0.01, max(values) + 0.01)  # the differences are a few hundredths
        ax.set_xticks(x + 0.4 - width / 2, [f"n_A={c[1]}\nm={c[2]}" for c in configs], fontsize=8)
        ax.set_title(domain)
        ax.set_ylabel("test MRR")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
