"""The language-model track: LoRA-adapt a backbone LM on the adaptation texts plus each method's
selection, and measure held-out target-domain perplexity (the paper's language-generation setting).

Data: `scripts/fetch_select_bench.py` (the 135k-text backbone pool, three target domains held out of it
and two from sources the pool does not contain: V.E.R.A. acronyms and German fortunes, a vocabulary
the pool-trained backbone LM fits badly); `--data data/select_fifth --store-work work/bench_fifth`
runs the reduced benchmark on a fifth of the pool.
Backbone: `scripts/pretrain_lm.py` pre-trains a few-million-parameter Llama and its BPE tokenizer on
the pool texts, once, cached by content hash; `--model DIR` points the same run at any local
Hugging Face causal-LM checkpoint instead.

For each domain, n_A, budget ratio and seed: n_A adaptation texts are drawn; `albat query` retrieves
k = max(--k, 2·ratio) candidates per adaptation text from the MiniLM backbone store (the test split
passed as --exclude); for each method `albat filter` selects m = ratio·n_A rows (`albat` and
`gradalign` with the `lm` surrogate on the same backbone LM; `--variant NAME=albat:key=value,...`
adds albat configurations under their own name; `auto_lm` is `auto` with judge=lm at its defaults, the
README's recommendation, its fold judge trained like every arm here) and `albat emit` writes the shard set.
`scripts/train_lora.py` then trains LoRA on those shards with albat_weight as the per-example loss
weight (same steps, batch and seed for every method), measuring held-out perplexity on the first 300
of the domain's 600 test texts after each of --checkpoints steps inside that one run (convergence),
and the relative distance of the adapter's ΔW = B·A to the one trained on the full target data
(all 512 adaptation texts), the paper's diagnostic. The report gives every method as the fraction of
the none → full-target perplexity gap it closes, and the steps it needs to reach `none`'s final
perplexity. Results append to WORK/results.jsonl, one record per run keyed by (domain, n_A, m, seed,
method, steps, model), so a rerun resumes and any subset (--domains, --sizes, --ratios, --seeds,
--methods) can run alone. A run first prints how many LoRA runs are left and, once WORK holds measured runs,
how long they should take (`--plan` prints only that); each run then prints its count and an ETA.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from benchmarks import bench_select
from benchmarks.bench_select import EMBED_ARGS, finished_keys, load_domains, run, verdict
from benchmarks.report import markdown_table, paired_difference, parse_variants, save_figure, write_section

METHODS = ["none", "random", "knn", "dsir", "classifier", "gradalign", "albat", "auto_lm", "oracle"]
# The README's recommendation for adapting a causal LM: `auto` with judge=lm at its own defaults (the
# classifier's rows, λ from 0 1 4, the race), its fold judge trained like every arm here (lm_judge_options).
BUILTIN_VARIANTS: dict[str, tuple[str, list[str]]] = {"auto_lm": ("auto", ["judge=lm"])}
BASELINES = ("none", "random", "knn", "dsir", "classifier", "gradalign")  # what a product method must beat
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
    return [f"{k}={v}" for k, v in opts.items()]


def oracle_texts(pool: dict[int, tuple[str, bool]], adaptation: list[str], blocked: np.ndarray, m: int,
                 seed: int) -> tuple[list[str], np.ndarray]:
    """The reference arm: m random pool texts of the target's own domain (not blocked), weighted as
    `albat emit` weighs a selection (adaptation rows 1, backbone rows λ·n_A/m with λ = 1)."""
    from albat.pipeline.emit import backbone_weights

    blocked_ids = set(blocked.tolist())
    allowed = np.array(sorted(i for i, (_, own) in pool.items() if own and i not in blocked_ids))
    chosen = np.random.default_rng([seed, m]).choice(allowed, size=min(m, len(allowed)), replace=False)
    texts = adaptation + [pool[int(i)][0] for i in chosen]
    return texts, np.concatenate([np.ones(len(adaptation)), backbone_weights(np.ones(len(chosen)), len(adaptation), 1.0)])


def checkpoint_steps(args) -> tuple[int, ...]:
    """The steps at which a run's held-out perplexity is measured: --checkpoints and the final step."""
    return tuple(sorted({int(c) for c in args.checkpoints.split(",") if c} | {args.steps}))


def adapt_and_measure(trainer, model: Path, texts: list[str], weights: np.ndarray, test: list[str], args,
                      seed: int) -> tuple[float, np.ndarray, dict[str, Any]]:
    """(final test perplexity, ΔW, run record: convergence curve {step: perplexity}, training and
    evaluation seconds) of one LoRA run on the weighted texts."""
    checkpoints = checkpoint_steps(args)
    adapted, tokenizer, rep = trainer.train_lora(
        model, texts, weights, seed=seed, eval_at=checkpoints,
        evaluate=lambda m, tok: trainer.perplexity(m, tok, test, args.max_length), **lora_options(args))
    curve = {str(k): v for k, v in rep["curve"].items()}
    return curve[str(args.steps)], trainer.lora_delta(adapted), {
        "curve": curve, "train_seconds": rep["seconds"], "eval_seconds": rep["eval_seconds"]}


def parse_ratios(spec: str) -> list[tuple[int, int | None]]:
    """"2,8,32@16" -> [(2, None), (8, None), (32, 16)]: a ratio for every n_A, or only at n_A = N."""
    out = []
    for item in filter(None, (x.strip() for x in spec.split(","))):
        ratio, _, only = item.partition("@")
        out.append((int(ratio), int(only) if only else None))
    return out


def grid(sizes: str, ratios: str) -> list[tuple[int, int]]:
    """The (n_A, ratio) cells of --sizes and --ratios, smallest n_A first: "16,64" and "2,32@16" ->
    [(16, 2), (16, 32), (64, 2)]."""
    return [(n_a, ratio) for n_a in [int(x) for x in sizes.split(",") if x]
            for ratio, only in parse_ratios(ratios) if only in (None, n_a)]


def build_backbone_store(data: Path, store_work: Path) -> None:
    """The MiniLM backbone store + index the query stage retrieves from (bench_select.backbone_store)."""
    bench_select.backbone_store(store_work / "backbone", data / "pool.parquet", EMBED_ARGS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/select"))
    parser.add_argument("--work", type=Path, default=Path("work/bench_lm"))
    parser.add_argument("--store-work", type=Path, default=Path("work/bench_select"),
                        help="where the MiniLM backbone store and index live (shared with bench-select)")
    parser.add_argument("--model", type=Path, help="a local causal-LM checkpoint (default: pre-train our own)")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--section", default="lm", help="BENCHMARKS.md section (and plot) name; a reduced run "
                        "(another --data, a subset) gets its own, e.g. lm-fifth")
    parser.add_argument("--sizes", default="16,64,256")
    parser.add_argument("--ratios", default="2,8,32@16",
                        help="budgets m = ratio·n_A; RATIO@N: only at n_A = N")
    parser.add_argument("--k", type=int, default=16, help="neighbours retrieved per adaptation text (at least "
                        "2·ratio)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--full-seeds", default=None, help="seeds of the full-target reference runs (default: "
                        "--seeds; fewer saves time: a seed without its own reference uses the others' mean)")
    parser.add_argument("--methods", default=",".join(METHODS), help="methods and --variant names to run")
    parser.add_argument("--product", default="", help="comma-separated methods or --variant names judged against "
                        "the baselines in the verdict tables (default: every name starting with albat)")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=METHOD[:key=value,...]: a method with options, reported as NAME")
    parser.add_argument("--domains", default="", help="comma-separated slugs (default: all)")
    parser.add_argument("--steps", type=int, default=200, help="LoRA steps of every arm")
    parser.add_argument("--checkpoints", default="25,50,100,200", help="steps at which held-out perplexity is "
                        "measured inside each run")
    parser.add_argument("--surrogate-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--projection-dim", type=int, default=1024)
    parser.add_argument("--test-texts", type=int, default=300)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--report-only", action="store_true",
                        help="tabulate WORK/results.jsonl again: only the runs of --seeds and --methods (with the "
                             "backbone and full references)")
    parser.add_argument("--plan", action="store_true", help="print how many runs are left and how long they "
                        "should take at the run times measured in WORK/results.jsonl, then stop")
    parser.add_argument("--query-only", action="store_true", help="only run every cell's query stage (no backbone LM "
                        "needed: prepares the cells while it pre-trains)")
    args = parser.parse_args()

    domains = load_domains(args.data, args.domains)
    results_path = args.work / "results.jsonl"
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
        bench_select.THREADS[0] = args.threads
    if args.query_only:
        build_backbone_store(args.data, args.store_work)
        for n_a, ratio in grid(args.sizes, args.ratios):
            for domain in domains:
                for seed in seed_list(args):
                    run_cell(args, None, Path(), domain, n_a, ratio, seed, ["none"], {}, set(), None,
                             pq.read_table(args.data / domain["adapt"]), [], None, np.empty(0))
        return
    if args.plan:
        model = args.model or _script("pretrain_lm").default_backbone_dir(args.data / "pool.parquet", "text",
                                                                          args.work / "backbone")
        print(plan_line(args, runs_left(args, model, domains, finished_keys(results_path)), read_records(results_path)))
        return
    if not args.report_only:
        args.work.mkdir(parents=True, exist_ok=True)
        model = args.model or Path(_script("pretrain_lm").pretrain_backbone(
            args.data / "pool.parquet", "text", args.work / "backbone"))
        run_all(args, model, domains, results_path)
    report(args, results_path)


def run_key(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def all_variants(args) -> dict[str, tuple[str, list[str]]]:
    """The built-in variants (auto_lm) and the --variant ones, which win on a shared name."""
    return {**BUILTIN_VARIANTS, **parse_variants(args.variant)}


def seed_list(args) -> list[int]:
    return [int(s) for s in args.seeds.split(",")]


def full_seeds(args) -> list[int]:
    """The seeds of the full-target reference runs: --full-seeds, else --seeds."""
    return seed_list(args) if args.full_seeds is None else [int(x) for x in args.full_seeds.split(",") if x]


def cell_keys(args, model: Path, domain: dict, n_a: int, ratio: int, seed: int, methods: list[str]) -> dict[str, dict]:
    """The run key of every method of one (domain, n_A, m, seed); oracle only where the domain is in the pool."""
    return {meth: run_key(domain=domain["slug"], n_a=n_a, m=ratio * n_a, seed=seed, method=meth, steps=args.steps,
                          model=str(model))
            for meth in methods if not (meth == "oracle" and not domain.get("in_pool", True))}


def runs_left(args, model: Path, domains: list[dict], done: set[str]) -> list[dict]:
    """The keys of every LoRA run this invocation would still train, in run order: the full-target references,
    then each cell's methods."""
    left = [{"domain": d["slug"], "method": "full", "seed": seed, "steps": args.steps, "model": str(model)}
            for d in domains for seed in full_seeds(args)]
    for n_a, ratio in grid(args.sizes, args.ratios):
        for domain in domains:
            for seed in seed_list(args):
                left += cell_keys(args, model, domain, n_a, ratio, seed, args.methods.split(",")).values()
    return [key for key in left if json.dumps(key) not in done]


def read_records(results_path: Path) -> list[dict]:
    return [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.exists() else []


def run_costs(records: list[dict], steps: int, checkpoints: int) -> tuple[float, float, dict[str, float]] | None:
    """Medians over the measured runs: training seconds scaled to `steps`, evaluation seconds scaled to
    `checkpoints` evaluations, and each method's selection seconds. None before any run was measured."""
    timed = [r for r in records if "train_seconds" in r and r["key"].get("steps")]
    if not timed:
        return None
    train = float(np.median([r["train_seconds"] * steps / r["key"]["steps"] for r in timed]))
    evals = float(np.median([(r.get("eval_seconds") or 0.0) * checkpoints / max(len(r.get("curve", {})), 1)
                             for r in timed]))
    select: dict[str, list[float]] = {}
    for r in timed:
        if "select_seconds" in r:
            select.setdefault(r["key"]["method"], []).append(r["select_seconds"])
    return train, evals, {name: float(np.median(v)) for name, v in select.items()}


def estimate_seconds(left: list[dict], costs: tuple[float, float, dict[str, float]]) -> tuple[float, list[str]]:
    """Seconds the runs `left` should take (training + evaluation + the method's measured selection), and the
    methods with no measured selection time (counted as training only)."""
    train, evals, select = costs
    unmeasured = sorted({k["method"] for k in left if k["method"] not in select} - {"full", "none", "oracle"})
    return sum(train + evals + select.get(k["method"], 0.0) for k in left), unmeasured


def plan_line(args, left: list[dict], records: list[dict]) -> str:
    checkpoints = len(checkpoint_steps(args))
    head = f"bench_lm: {len(left)} LoRA runs left ({args.steps} steps, {checkpoints} evaluations each)"
    costs = run_costs(records, args.steps, checkpoints)
    if costs is None:
        return head + "; no run measured yet in this WORK, so no estimate (the progress lines give one as it runs)"
    seconds, unmeasured = estimate_seconds(left, costs)
    note = f"; no measured selection time for {', '.join(unmeasured)}" if unmeasured else ""
    span = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
    return (f"{head}: about {span} in one process at the medians measured here (training "
            f"{costs[0]:.0f} s, evaluation {costs[1]:.0f} s a run, scaled to these steps; selection per method){note}")


def progress_line(done: int, total: int, elapsed: float) -> str:
    """`done` of `total` runs after `elapsed` seconds, with the ETA at this invocation's own rate."""
    eta = elapsed / done * (total - done) if done else float("nan")
    return (f"bench_lm: {done}/{total} runs, {elapsed / 60:.1f} min elapsed"
            + (f", ETA {eta / 60:.0f} min" if done else ""))


def run_all(args, model: Path, domains: list[dict], results_path: Path) -> None:
    trainer = _script("train_lora")
    build_backbone_store(args.data, args.store_work)
    done = finished_keys(results_path)
    seeds = seed_list(args)
    variants = all_variants(args)
    methods = args.methods.split(",")
    check_distinct(args, model, methods, variants)
    full_delta: dict[tuple[str, int], np.ndarray] = {}
    left = runs_left(args, model, domains, done)
    print(plan_line(args, left, read_records(results_path)), file=sys.stderr, flush=True)
    todo, finished, started = {json.dumps(k) for k in left}, [0], time.perf_counter()
    with results_path.open("a") as out:
        def record(key: dict, **values: Any) -> None:
            out.write(json.dumps({"key": key, **values}) + "\n")
            out.flush()
            print(json.dumps({**key, **{k: v for k, v in values.items() if not isinstance(v, (list, dict))}}),
                  flush=True)
            if json.dumps(key) in todo:
                finished[0] += 1
                print(progress_line(finished[0], len(todo), time.perf_counter() - started), file=sys.stderr,
                      flush=True)

        tests, adapts, owns = {}, {}, {}
        for domain in domains:
            slug = domain["slug"]
            owns[slug] = own_domain(args.data, domain) if domain.get("in_pool", True) else None
            adapts[slug] = pq.read_table(args.data / domain["adapt"])
            tests[slug] = pq.read_table(args.data / domain["test"]).column("text").to_pylist()[: args.test_texts]
            key = {"domain": slug, "method": "backbone", "model": str(model)}
            if json.dumps(key) not in done:
                loaded, tokenizer = trainer.load_causal_lm(model)
                record(key, perplexity=trainer.perplexity(loaded, tokenizer, tests[slug], args.max_length))
            for seed in full_seeds(args):  # the reference: LoRA on the full target data (all adaptation texts)
                texts = adapts[slug].column("text").to_pylist()
                delta_path = args.work / "full" / f"{slug}-s{seed}-t{args.steps}.npy"
                key = {"domain": slug, "method": "full", "seed": seed, "steps": args.steps, "model": str(model)}
                if json.dumps(key) not in done or not delta_path.exists():
                    ppl, delta, rec = adapt_and_measure(trainer, model, texts, np.ones(len(texts)), tests[slug],
                                                        args, seed)
                    delta_path.parent.mkdir(parents=True, exist_ok=True)
                    np.save(delta_path, delta)
                    record(key, perplexity=ppl, rows=len(texts), **rec)
                full_delta[(slug, seed)] = np.load(delta_path, allow_pickle=False)
        for n_a, ratio in grid(args.sizes, args.ratios):  # smallest n_A first: a partial run covers every domain
            for domain in domains:
                for seed in seeds:
                    run_cell(args, trainer, model, domain, n_a, ratio, seed, methods, variants, done, record,
                             adapts[domain["slug"]], tests[domain["slug"]], owns[domain["slug"]],
                             reference_delta(full_delta, domain["slug"], seed))


def reference_delta(full_delta: dict[tuple[str, int], np.ndarray], slug: str, seed: int) -> np.ndarray:
    """The same seed's full-target ΔW, else the mean of the domain's other seeds' (--full-seeds)."""
    if (slug, seed) in full_delta:
        return full_delta[(slug, seed)]
    others = [d for (s, _), d in full_delta.items() if s == slug]
    if not others:
        raise SystemExit(f"no full-target reference for {slug}: include a seed in --full-seeds")
    return np.mean(others, axis=0)


def run_cell(args, trainer, model: Path, domain: dict, n_a: int, ratio: int, seed: int, methods: list[str],
             variants: dict, done: set[str], record, adapt, test: list[str], own, full: np.ndarray) -> None:
    """Every pending method of one (domain, n_A, m, seed): query once, then select, emit, train."""
    slug, m = domain["slug"], ratio * n_a
    k = max(args.k, 2 * ratio)
    keys = cell_keys(args, model, domain, n_a, ratio, seed, methods)  # oracle needs in-pool domain rows
    pending = [meth for meth, key in keys.items() if json.dumps(key) not in done]
    if not pending:
        return
    rows = np.sort(np.random.default_rng([seed, n_a]).choice(adapt.num_rows, n_a, replace=False))
    exp = experiment_dir(args.work, args.store_work, f"{slug}-n{n_a}-s{seed}-k{k}")
    if not (exp / "adaptation.parquet").exists():  # written once: a rerun's query stage finds its inputs unchanged
        pq.write_table(adapt.take(rows), exp / "adaptation.parquet")
        # only the evaluated test texts are excluded (their near-duplicates blocked): the rest is never scored
        pq.write_table(pq.read_table(args.data / domain["test"]).slice(0, args.test_texts), exp / "test.parquet")
    run("query", "--work", exp, "--adaptation", exp / "adaptation.parquet",
        "--adaptation-pair-column", "query", "--exclude", exp / "test.parquet", "--k", k, "--quiet")
    candidates = pq.read_metadata(exp / "tasks/default/query" / "candidates.parquet").num_rows
    if args.query_only:
        return
    for name in pending:
        method, options = variants.get(name, (name, []))
        if method == "oracle":
            blocked = pq.read_table(exp / "tasks/default/query" / "blocked.parquet").column("id").to_numpy()
            texts, weights = oracle_texts(own, adapt.take(rows).column("text").to_pylist(), blocked, m, seed)
            kept, select_seconds = len(texts) - n_a, 0.0
        else:
            method_options, emit_args = filter_options(args, model, method, options)
            extra = ["--filter-threads", args.threads] if args.threads else []
            extra += [x for o in method_options for x in ("--method-option", o)]
            run("filter", "--work", exp, "--method", method, "--budget", m, "--seed", seed, "--quiet", *extra)
            summary = json.loads((exp / "tasks/default/_stages" / "filter.json").read_text())["summary"]
            run("emit", "--work", exp, "--output", f"emitted-{name}-m{m}", "--quiet", *emit_args)
            texts, weights = trainer.load_shard_set(exp / "tasks/default" / f"emitted-{name}-m{m}")
            kept, select_seconds = int(summary["kept"]), float(summary["seconds"])
        ppl, delta, rec = adapt_and_measure(trainer, model, texts, weights, test, args, seed)
        record(keys[name], perplexity=ppl, kept=kept, rows=len(texts), select_seconds=select_seconds,
               candidates=candidates, k=k, **rec,
               distance_to_full=float(np.linalg.norm(delta - full) / max(np.linalg.norm(full), 1e-12)))


def lm_judge_options(args, model: Path, given: list[str]) -> list[str]:
    """`auto`'s judge=lm options that make its fold judge the benchmark's LoRA (checkpoint, steps, learning
    rate, batch size, rank, alpha, max length), unless the variant sets them itself."""
    opts = {"model": model, "judge_steps": args.steps, "judge_lr": args.lr, "judge_batch_size": args.batch_size,
            "lora_rank": args.rank, "lora_alpha": args.alpha, "max_length": args.max_length}
    set_keys = {o.partition("=")[0] for o in given}
    return [f"{k}={v}" for k, v in opts.items() if k not in set_keys]


def filter_options(args, model: Path, method: str, options: list[str]) -> tuple[list[str], list[str]]:
    """(the `--method-option` values, the `albat emit` flags) of a method or variant: the `lm` surrogate's
    settings for albat and gradalign, the benchmark's LoRA for auto's judge=lm, then the variant's own."""
    method_options, emit_args = split_emit_options(options)
    extra = surrogate_options(args, model) if method in ("albat", "gradalign") else []
    if method == "auto" and "judge=lm" in method_options:  # the fold judge trains like every arm here
        extra += lm_judge_options(args, model, method_options)
    return extra + method_options, emit_args


def filter_signature(args, model: Path, name: str, variants: dict) -> tuple:
    """What `albat filter` and `albat emit` get for a method or --variant NAME (`filter_options`)."""
    method, options = variants.get(name, (name, []))
    method_options, emit_args = filter_options(args, model, method, options)
    return method, tuple(sorted(method_options)), tuple(emit_args)


def check_distinct(args, model: Path, methods: list[str], variants: dict) -> None:
    """Two names with the same filter and emit options would share one selection: the filter stage finds
    the first one's completed record and skips, so the second column would copy the first's choices and
    selection times (round fourteen's `lm_autos64` did; docs/albat-design.md round fifteen). Refuse."""
    seen: dict[tuple, str] = {}
    for name in methods:
        if name == "oracle":
            continue
        signature = filter_signature(args, model, name, variants)
        if signature in seen:
            raise SystemExit(f"bench_lm: {name} and {seen[signature]} run `albat filter`/`albat emit` with the same "
                             f"options ({signature[0]}: {', '.join(signature[1]) or 'defaults'}), so {name} would only "
                             "reuse the other's selection; drop one, or give it an option that differs")
        seen[signature] = name


def split_emit_options(options: list[str]) -> tuple[list[str], list[str]]:
    """A --variant's options: the method's, and `albat emit` flags for the emit options among them
    (["spread=2", "backbone_weight=0.5"] -> (["spread=2"], ["--backbone-weight", "0.5"]))."""
    emit_keys = {"backbone_weight"}
    method_options = [o for o in options if o.partition("=")[0] not in emit_keys]
    emit_args = [x for o in options if o.partition("=")[0] in emit_keys
                 for x in ("--" + o.partition("=")[0].replace("_", "-"), o.partition("=")[2])]
    return method_options, emit_args


def in_domain_shares(args, records: list[dict]) -> dict[str, list[float]]:
    """Per method, the share of selected backbone rows from the target's own domain, read back from
    the emitted shard sets still in WORK/runs (oracle: 1 by construction; none: no selection;
    domains outside the pool: none to share)."""
    domains = {d["slug"]: d for d in load_domains(args.data, "")}
    owned: dict[str, set[int]] = {}
    out: dict[str, list[float]] = {}
    for r in records:
        k = r["key"]
        if "n_a" not in k or "k" not in r or not domains.get(k["domain"], {}).get("in_pool", True):
            continue
        shards = (args.work / "runs" / f"{k['domain']}-n{k['n_a']}-s{k['seed']}-k{r['k']}"
                  / "tasks" / "default" / f"emitted-{k['method']}-m{k['m']}")
        if not (shards / "manifest.json").exists():
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


def gap_closed(ppl: float, none: float, full: float) -> float:
    """The fraction of the none → full-target perplexity gap a run closes: 0 = none, 1 = full target
    data, < 0 worse than adding nothing, > 1 better than the full target data."""
    return (none - ppl) / (none - full) if none != full else math.nan


def steps_to_reach(curve: dict[str, float], target: float) -> int | None:
    """The first checkpoint step whose perplexity is at or below `target` (None: never within the run)."""
    for step, value in sorted(((int(k), v) for k, v in curve.items()), key=lambda kv: kv[0]):
        if value <= target:
            return step
    return None


def reference_perplexity(full: dict[tuple[str, int], dict], domain: str, seed: int) -> float | None:
    """The same seed's full-target perplexity, else the mean of the domain's other seeds (None: no reference)."""
    if (domain, seed) in full:
        return full[(domain, seed)]["perplexity"]
    others = [r["perplexity"] for (d, _), r in full.items() if d == domain]
    return float(np.mean(others)) if others else None


def product_methods(methods: list[str], named: str = "") -> list[str]:
    """What must beat the baselines: the --product names among `methods`, by default the project's own
    (every name starting with albat or auto: albat, auto_lm and their --variant configurations)."""
    wanted = [x for x in named.split(",") if x]
    return [m for m in methods if m in wanted] if wanted else [m for m in methods if m.startswith(("albat", "auto"))]


def _stats(values: list[float], digits: int = 2) -> str:
    v = np.array([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if not len(v):
        return "-"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1) if len(v) > 1 else 0:.{digits}f}"


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def cell_verdicts(groups: dict[tuple, list[dict]], cell: tuple, product: str) -> list[str] | None:
    """[product − best baseline, best, spread, verdict, random − oracle, evidence|control] for one cell."""
    ppl = {m: [r["perplexity"] for r in groups[(*cell, m)]] for m in (product, "oracle", *BASELINES)
           if (*cell, m) in groups}
    baselines = {m: float(np.mean(ppl[m])) for m in BASELINES if m in ppl}
    if product not in ppl or not baselines:
        return None
    best = min(baselines, key=baselines.get)
    diff = float(np.mean(ppl[product])) - baselines[best]
    sd = max(_std(ppl[product]), _std(ppl[best]))
    gap = ((float(np.mean(ppl["random"]) - np.mean(ppl["oracle"])), max(_std(ppl["random"]), _std(ppl["oracle"])))
           if "random" in ppl and "oracle" in ppl else None)
    return [f"{diff:+.2f}", best, f"{sd:.2f}", verdict(-diff, sd),
            f"{gap[0]:+.2f} (spread {gap[1]:.2f})" if gap else "-",
            ("evidence" if gap[0] > gap[1] else "control") if gap else "no oracle"]


def robustness_rows(groups: dict[tuple, list[dict]], cells: list[tuple], methods: list[str]) -> list[list[str]]:
    """Every method (baselines too) against the best of the *other* baselines in each cell, where the
    best baseline changes from cell to cell: cells run, at or above it within the larger seed std,
    beyond it, the mean difference in perplexity (negative: better), and the same two counts paired by
    seed (`paired_difference`: the per-seed differences' mean against their std)."""
    def by_seed(cell: tuple, method: str) -> dict[int, float]:
        return {r["key"]["seed"]: r["perplexity"] for r in groups.get((*cell, method), [])}

    def is_evidence(cell: tuple) -> bool:  # paired: oracle below random by more than the std of their differences
        gap, gap_sd, n = paired_difference(by_seed(cell, "random"), by_seed(cell, "oracle"))
        return bool(n) and gap > gap_sd

    evidence_cells = {cell for cell in cells if is_evidence(cell)}
    rows = []
    for method in methods:
        if method in ("none", "oracle"):
            continue
        diffs, within, beyond, p_within, p_beyond, evidence, e_beyond = [], 0, 0, 0, 0, 0, 0
        for cell in cells:
            mine = by_seed(cell, method)
            others = {b: by_seed(cell, b) for b in BASELINES if b not in (method, "none") and (*cell, b) in groups}
            if not mine or not others:
                continue
            best = min(others, key=lambda b: np.mean(list(others[b].values())))
            diff = float(np.mean(list(mine.values())) - np.mean(list(others[best].values())))
            sd = max(_std(list(mine.values())), _std(list(others[best].values())))
            diffs.append(diff)
            within += diff <= sd
            beyond += diff < -sd
            p_diff, p_sd, _ = paired_difference(mine, others[best])
            p_within += p_diff <= p_sd
            p_beyond += p_diff < -p_sd
            if cell in evidence_cells:
                evidence += 1
                e_beyond += p_diff < -p_sd
        if diffs:
            rows.append([method, len(diffs), f"{within} of {len(diffs)}", beyond, f"{np.mean(diffs):+.2f}",
                         f"{p_within} of {len(diffs)}", p_beyond, f"{e_beyond} of {evidence}"])
    return rows


def tabulated(records: list[dict], seeds: set[int], methods: set[str],
              cells: set[tuple[int, int]] | None = None, domains: set[str] | None = None) -> list[dict]:
    """The records a --report-only table shows: the references (backbone, full) and the selection runs of
    the given seeds and methods, so a method run on more seeds than the others is not compared on
    unequal seeds, of the given (n_A, m) cells (None: every cell), so runs of another grid that share
    the results file stay out of this section, and of the given domains (None: every domain)."""
    return [r for r in records if (domains is None or r["key"].get("domain") in domains)
            and (r["key"]["method"] in ("backbone", "full")
                 or (r["key"]["method"] in methods and r["key"].get("seed") in seeds
                     and (cells is None or (r["key"].get("n_a"), r["key"].get("m")) in cells)))]


def report(args, results_path: Path) -> None:
    """Mean ± std over seeds per (domain, n_A, m, method): perplexity, the none → full gap closed,
    convergence, verdicts and times; tables and a plot into BENCHMARKS.md (section --section)."""
    records = list({json.dumps(r["key"], sort_keys=True): r for r in map(json.loads, results_path.read_text().splitlines())
                    }.values())  # one record per run key: two processes that ran one run both appended it
    records = [r for r in records if r["key"].get("steps", args.steps) == args.steps]
    if args.report_only:
        records = tabulated(records, {int(x) for x in args.seeds.split(",") if x}, set(args.methods.split(",")),
                            {(n_a, ratio * n_a) for n_a, ratio in grid(args.sizes, args.ratios)},
                            {d["slug"] for d in load_domains(args.data, args.domains)} if args.domains else None)
    backbone = {r["key"]["domain"]: r["perplexity"] for r in records if r["key"]["method"] == "backbone"}
    full = {(r["key"]["domain"], r["key"]["seed"]): r for r in records if r["key"]["method"] == "full"}
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if "n_a" in r["key"]:
            k = r["key"]
            groups.setdefault((k["domain"], k["n_a"], k["m"], k["method"]), []).append(r)
    order = METHODS + sorted({key[3] for key in groups} - set(METHODS))
    methods = [m for m in order if any(key[3] == m for key in groups)]
    cells = sorted({key[:3] for key in groups})
    none_of = {(r["key"]["domain"], r["key"]["n_a"], r["key"]["m"], r["key"]["seed"]): r
               for r in records if r["key"].get("method") == "none" and "n_a" in r["key"]}

    def gaps(cell: tuple, method: str, step: str | None = None) -> list[float]:
        out = []
        for r in groups.get((*cell, method), []):
            base = none_of.get((*cell, r["key"]["seed"]))
            ref = reference_perplexity(full, cell[0], r["key"]["seed"])
            if ref is not None and base:
                value = r["curve"][step] if step else r["perplexity"]
                out.append(gap_closed(value, base["perplexity"], ref))
        return out

    def reach(cell: tuple, method: str) -> str:
        steps = []
        for r in groups.get((*cell, method), []):
            base = none_of.get((*cell, r["key"]["seed"]))
            if base and "curve" in r:
                steps.append(steps_to_reach(r["curve"], base["perplexity"]))
        if not steps:
            return "-"
        reached = [s for s in steps if s is not None]
        return (f"{int(np.median(reached))}" if len(reached) == len(steps)
                else f"{int(np.median(reached))} ({len(reached)}/{len(steps)})" if reached else f">{args.steps}")

    label = lambda cell: [cell[0], cell[1], cell[2]]  # noqa: E731
    no_cells = [[d, f"{p:.2f}"] for d, p in sorted(backbone.items()) if not any(c[0] == d for c in cells)]
    ppl_rows = [label(c) + [f"{backbone.get(c[0], float('nan')):.2f}",
                            _stats([full[(c[0], s)]["perplexity"] for s in sorted({k[1] for k in full if k[0] == c[0]})])]
                + [_stats([r["perplexity"] for r in groups.get((*c, m), [])]) for m in methods] for c in cells]
    gap_rows = [label(c) + [_stats(gaps(c, m)) for m in methods] for c in cells]
    reach_rows = [label(c) + [reach(c, m) for m in methods] for c in cells]
    checkpoints = sorted({int(s) for rs in groups.values() for r in rs for s in r.get("curve", {})})
    curve_rows = [[m] + [_stats([g for c in cells for g in gaps(c, m, str(step))]) for step in checkpoints]
                  for m in methods if m != "none"]
    products = product_methods(methods, args.product)
    verdict_rows, counts = [], []
    for product in products:
        rows = [[product] + label(c) + v for c in cells if (v := cell_verdicts(groups, c, product))]
        verdict_rows += rows
        tally = {kind: [sum(1 for r in rows if r[-1] == kind and r[7] == v) for v in ("win", "tie", "loss")]
                 for kind in ("evidence", "control", "no oracle")}
        kept = sum(1 for r in rows if r[7] != "loss")  # r: method, domain, n_A, m, diff, best, spread, verdict, ...
        counts.append([product] + ["/".join(map(str, tally[k])) for k in ("evidence", "control", "no oracle")]
                      + [f"{kept} of {len(rows)}", _stats([g for c in cells for g in gaps(c, product)])])
    share = in_domain_shares(args, records)
    timing: dict[str, list[dict]] = {}
    for key, runs in groups.items():
        timing.setdefault(key[3], []).extend(runs)
    runs = [r for r in records if "train_seconds" in r]
    per_run = [r["train_seconds"] + r.get("eval_seconds", 0) + r.get("select_seconds", 0) for r in runs]
    seeds = sorted({r["key"]["seed"] for r in records if "n_a" in r["key"]})
    body = [f"Held-out target perplexity (lower is better) after LoRA on the n_A adaptation texts plus each method's "
            f"m-row selection, every arm trained by `scripts/train_lora.py` on the emitted shards (albat_weight as "
            f"the loss weight): {args.steps} steps, batch {args.batch_size}, lr {args.lr}, rank {args.rank}, "
            f"α {args.alpha}, {args.max_length} tokens; mean ± std over seeds {seeds}. `backbone`: no adapter; "
            "`full`: LoRA on all 512 adaptation texts of the domain (the reference). albat, its variants and "
            f"gradalign use the `lm` surrogate on the same backbone LM ({args.surrogate_steps} surrogate steps, "
            f"projection {args.projection_dim}). `oracle` (m random pool texts of the target's own domain) needs the "
            f"domain in the pool: `-` for vera and fortunes_de. {len(runs)} runs"
            + (" (tabulated again by --report-only)." if args.report_only else "."), "",
            markdown_table(["domain", "n_A", "m", "backbone", "full"] + methods, ppl_rows), "",
            *([("Backbone perplexity of target domains without selection runs in this section (how well the "
                "pool-trained backbone LM fits them):"), "", markdown_table(["domain", "backbone"], no_cells), ""]
              if no_cells else []),
            "Fraction of the none → full-target perplexity gap closed, (ppl_none − ppl) / (ppl_none − ppl_full), "
            "per seed against the same seed's none and full runs (0: nothing gained over the adaptation set alone, "
            "1: as good as all 512 target texts):", "",
            markdown_table(["domain", "n_A", "m"] + methods, gap_rows), "",
            f"Product method ({', '.join(products) or 'none run'}: --product, by default every albat and auto name) "
            "minus the best baseline (none, random, knn, dsir, classifier, gradalign) in "
            "final perplexity (lower is better); within the larger seed std of the two is a tie. A cell is evidence "
            "where random − oracle exceeds their larger std (in-domain data visibly helps), a control otherwise, "
            "and has no oracle where the domain is not in the pool.", "",
            markdown_table(["method", "domain", "n_A", "m", "− best", "best baseline", "spread", "verdict",
                            "random − oracle", "cell"], verdict_rows), "",
            markdown_table(["method", "evidence W/T/L", "control W/T/L", "no-oracle W/T/L", "at or above best within "
                            "spread", "gap closed (all cells)"], counts), "",
            "Robustness: each method against the best of the *other* baselines (random, knn, dsir, classifier, "
            "gradalign; not none) of each cell, which changes from cell to cell; at or above it within the larger "
            "seed std, beyond it (better by more than that std), and the mean difference in perplexity (negative: "
            "lower than the best other baseline). The last two columns pair the runs by seed (same adaptation draw, "
            "same training noise): the mean of the per-seed differences against their own std; the last counts only "
            "the evidence cells, paired (random − oracle above the std of its per-seed differences):", "",
            markdown_table(["method", "cells", "at or above within spread", "better beyond spread", "mean − best other",
                            "paired: at or above", "paired: better beyond", "paired: better beyond, evidence cells"],
                           robustness_rows(groups, cells, methods)), "",
            "Convergence, the paper's claim: the gap closed at each checkpoint of the same training runs, against "
            "none's *final* perplexity (mean ± std over every cell and seed):", "",
            markdown_table(["method"] + [f"step {s}" for s in checkpoints], curve_rows), "",
            f"Steps to reach none's final ({args.steps}-step) perplexity, the first checkpoint at or below it (median "
            f"over seeds; (r/n): only r of n seeds reached it; >{args.steps}: none did):", "",
            markdown_table(["domain", "n_A", "m"] + methods, reach_rows), "",
            "Selection time per call (the filter stage's clock; albat includes its surrogate fit), LoRA training "
            "time (without the checkpoint evaluations) and the held-out evaluations' time per run:", "",
            markdown_table(["method", "select s (mean)", "select s (max)", "candidates (mean)", "train s (mean)",
                            "eval s (mean)", "in-domain share of the selection"],
                           [[m, f"{np.mean([r.get('select_seconds', 0) for r in timing[m]]):.2f}",
                             f"{np.max([r.get('select_seconds', 0) for r in timing[m]]):.2f}",
                             f"{np.mean([r['candidates'] for r in timing[m]]):.0f}",
                             f"{np.mean([r['train_seconds'] for r in timing[m]]):.1f}",
                             f"{np.mean([r.get('eval_seconds', 0) for r in timing[m]]):.1f}",
                             f"{np.mean(share[m]):.2f}" if share.get(m) else "-"] for m in methods if m in timing]),
            "", f"Time: {len(runs)} runs, {sum(per_run) / 3600:.2f} h of select + train + evaluation in all, "
            f"{np.mean(per_run) if per_run else 0:.1f} s a run on average (query stage and emits not counted)."]
    plot = plot_results(groups, backbone, full, methods, args.out.parent / "benchmarks" / f"{args.section}.png")
    if plot:
        body += ["", f"![perplexity per method]({plot.relative_to(args.out.parent)})"]
    title = "Language-model track (`make bench-lm`)" if args.section == "lm" else \
        f"Language-model track, reduced: {args.section}"
    write_section(args.out, args.section, title, "\n".join(body))


def plot_results(groups, backbone, full, methods: list[str], path: Path) -> Path | None:
    """Per domain: mean held-out perplexity per method at every (n_A, m) cell, the full-target mean dashed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    domains = sorted({key[0] for key in groups})
    fig, axes = plt.subplots(1, len(domains), figsize=(4.5 * len(domains), 3.8), squeeze=False)
    for ax, domain in zip(axes[0], domains):
        cells = sorted({key[1:3] for key in groups if key[0] == domain})
        for i, method in enumerate(methods):
            runs = [[r["perplexity"] for r in groups.get((domain, *c, method), [])] for c in cells]
            ax.errorbar(np.arange(len(cells)) + 0.04 * (i - len(methods) / 2),
                        [np.mean(v) if v else math.nan for v in runs], [np.std(v) if v else 0 for v in runs],
                        label=method, marker="o", capsize=2, linestyle="none")
        refs = [r["perplexity"] for (d, _), r in full.items() if d == domain]
        if refs:
            ax.axhline(np.mean(refs), color="black", linestyle="--", label="full target (512)")
        ax.set_xticks(range(len(cells)), [f"{n}/{m}" for n, m in cells])
        ax.set_xlabel("n_A / m")
        ax.set_ylabel("held-out perplexity")
        ax.set_title(f"{domain} (backbone {backbone.get(domain, math.nan):.0f})")
    axes[0][-1].legend(fontsize=7)
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
