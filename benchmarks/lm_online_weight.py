"""A prototype outside the product: choose the weight λ with ONE LoRA fit whose mixture weight adapts while it
trains, instead of `auto`'s grid of fits (docs/albat-design.md round fifteen). Rejected: see the doc.

The issue's time bar asks for a λ choice that costs at most one training run; `auto` with judge=lm fits every
λ of its grid on every fold it runs (3.3x one run on average, round fourteen). This tries the one-fit idea of
online domain reweighting (DoGE, Fan et al. 2023; learning to reweight, Ren et al. 2018) on the benchmark's
cells. On the first of `auto`'s 3 folds (same split, same classifier selection on the training folds, same
steps as auto's λ > 0 fits: `fit_steps`), LoRA trains on

    L_t = (1 − α_t)·mean_A ℓ + α_t·mean_S ℓ,     α = λ/(1 + λ)     (the weighted loss of lora_train, w_b = 1)

with A the training fold's texts and S the kept rows, each batch's two parts backpropagated separately so
their gradients g_A, g_S are known. Every `every` steps the held-out fold's gradient g_v (a batch of at most
16 of its texts) is compared with the summed g_S − g_A of those steps in Adam's metric P = 1/(√v + ε): a
step's change of α moves the parameters by −lr·P(g_S − g_A)·dα, so

    c = ⟨g_v, P(g_S − g_A)⟩ / (‖g_v‖_P ‖g_S − g_A‖_P)  > 0   says more weight on S lowers the held-out loss now,

and u = logit α moves by `eta`·sign(c) (sign steps: no scale to tune). α starts at 1/2 (λ = 1). The choice is
the grid λ ∈ {0, 1, 4} whose α is nearest the mean α of the run (DoGE keeps the run's average weights).
It is compared with the λ that `lm_autor` (auto, judge=lm, the race) chose on the same cell, read from its
manifest. The judge's training settings are the benchmark's (bench_lm's `lm_judge_options`): 64 tokens,
lr 0.002, batch 16, rank 8, alpha 16.

    python -m benchmarks.lm_online_weight --work work/bench_lm_fifth --out work/online/online.jsonl
    python -m benchmarks.lm_online_weight --work work/bench_lm_fifth --out work/online/online.jsonl --table
    python -m benchmarks.lm_online_weight --work work/bench_lm_fifth --out work/online/online.jsonl --section BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

GRID = {0.0: 0.0, 1.0: 0.5, 4.0: 0.8}  # λ -> α = λ/(1+λ)


def nearest_lambda(alpha_mean: float) -> float:
    """The grid λ whose mixture weight α = λ/(1+λ) is nearest the run's mean α."""
    return min(GRID, key=lambda lam: abs(GRID[lam] - alpha_mean))


def cells(work: Path, variant: str) -> dict[str, float]:
    """{run folder: λ chosen by `variant`} for every run of the bench_lm work directory that has one."""
    out = {}
    for manifest in sorted(work.glob(f"runs/*/tasks/default/emitted-{variant}-m*/manifest.json")):
        auto = json.loads(manifest.read_text())["selection"].get("auto") or {}
        if "lambda" in auto:
            out[manifest.parts[-5]] = float(auto["lambda"])
    return out


def online_fit(run: Path, model_dir: Path, seed: int, budget: int, args) -> dict:
    import albat.pipeline.compat_torchvision  # noqa: F401  (before peft/transformers)
    import torch

    from albat.pipeline.config import load_config
    from albat.pipeline.filter import build_request
    from albat.pipeline.methods.auto import assign_folds, fold_budget, fold_request
    from albat.pipeline.methods.base import get_method
    from albat.pipeline.methods.lm_judge import fit_steps
    from albat.pipeline.surrogates.lm import attach_lora, load_causal_lm, lora_parameters, token_nll, tokenize
    from albat.pipeline.surrogates.lora_train import perplexity
    from albat.stores.workdir import Workdir

    torch.set_num_threads(1)
    request = build_request(load_config(None, {"work": str(run)}), Workdir(run), budget, seed)
    n = len(request.adaptation_texts)
    fold_of = assign_folds(n, 3, seed)
    train, held = np.nonzero(fold_of != args.fold)[0], np.nonzero(fold_of == args.fold)[0]
    clock = time.perf_counter()
    picked = get_method("classifier").select(fold_request(request, train, fold_budget(budget, len(train), n), {}))
    kept = np.sort(picked.ids[picked.keep])
    a_texts = [request.adaptation_texts[i] for i in train]
    texts = a_texts + request.store.texts_for_ids(kept)
    held_texts = [request.adaptation_texts[i] for i in held]
    n_a, n_s, rows_total = len(a_texts), len(kept), len(texts)
    steps = fit_steps(100, args.batch_size, rows_total, n_a, n, "passes")
    base, tokenizer = load_causal_lm(model_dir, "cpu")
    model = attach_lora(base, 8, 16.0, None, seed)
    params = list(lora_parameters(model).values())
    tokens, held_tokens = tokenize(tokenizer, texts, args.max_length), tokenize(tokenizer, held_texts, args.max_length)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    rng, held_rng = np.random.default_rng(seed), np.random.default_rng([seed, 7])
    order, cursor, u, alphas, cosines = rng.permutation(rows_total), 0, 0.0, [], []
    acc = {"A": [torch.zeros_like(p) for p in params], "S": [torch.zeros_like(p) for p in params]}
    model.train()
    for step in range(1, steps + 1):
        if cursor + args.batch_size > len(order) and cursor:
            order, cursor = rng.permutation(rows_total), 0
        rows = np.sort(order[cursor: cursor + args.batch_size])
        cursor += args.batch_size
        alpha = 1.0 / (1.0 + math.exp(-u))
        alphas.append(alpha)
        opt.zero_grad()
        for part, rows_part, size, weight in (("A", rows[rows < n_a], n_a, 1 - alpha), ("S", rows[rows >= n_a], n_s, alpha)):
            if not len(rows_part):
                continue
            ids, mask = tokens.take(rows_part).batch(slice(None), "cpu")
            estimate = (rows_total / len(rows)) * token_nll(model, ids, mask).sum() / size  # unbiased for mean ℓ
            grads = torch.autograd.grad(estimate, params)
            for p, g, a in zip(params, grads, acc[part]):
                p.grad = g * weight if p.grad is None else p.grad + g * weight
                a.add_(g)
        if step % args.every == 0:
            pick = np.sort(held_rng.choice(len(held_texts), min(16, len(held_texts)), replace=False))
            ids, mask = held_tokens.take(pick).batch(slice(None), "cpu")
            g_v = torch.autograd.grad(token_nll(model, ids, mask).mean(), params)
            num = vv = dd = 0.0
            for p, v, a, s in zip(params, g_v, acc["A"], acc["S"]):
                state = opt.state.get(p, {})
                metric = 1.0 / (state["exp_avg_sq"].sqrt() + 1e-8) if "exp_avg_sq" in state else torch.ones_like(p)
                d = s - a
                num += float((v * metric * d).sum())
                vv += float((v * metric * v).sum())
                dd += float((d * metric * d).sum())
            c = num / math.sqrt(max(vv * dd, 1e-30))
            cosines.append(round(c, 4))
            u += args.eta * (1.0 if c > 0 else -1.0)
            for a in acc["A"] + acc["S"]:
                a.zero_()
        opt.step()
    seconds = time.perf_counter() - clock
    model.eval()
    alpha_mean = float(np.mean(alphas))
    return {"run": run.name, "seed": seed, "budget": budget, "fold": args.fold, "eta": args.eta, "every": args.every,
            "max_length": args.max_length, "lr": args.lr, "steps": steps, "n_train": n_a, "kept": n_s,
            "alpha_mean": round(alpha_mean, 4), "alpha_last": round(alphas[-1], 4), "choice": nearest_lambda(alpha_mean),
            "seconds": round(seconds, 2), "held_ppl": round(perplexity(model, tokenizer, held_texts, args.max_length), 3),
            "cosines": cosines}


def run_cell_args(name: str) -> tuple[int, int]:
    """(seed, budget) of a bench_lm run folder `DOMAIN-nN-sS-kK` at m = 8·n_A, or 32·n_A where k = 64."""
    parts = name.rsplit("-", 3)
    n_a, seed, k = int(parts[1][1:]), int(parts[2][1:]), int(parts[3][1:])
    return seed, n_a * (32 if k == 64 else 8)


def table(rows: list[dict], grid: dict[str, float]) -> str:
    lines = ["| cell | λ (`lm_autor`) | λ (online) | mean α | last α | steps with c > 0 | fit s |",
             "|---|---|---|---|---|---|---|"]
    same = 0
    for r in sorted(rows, key=lambda r: r["run"]):
        want = grid[r["run"]]
        same += r["choice"] == want
        positive = sum(1 for c in r["cosines"] if c > 0)
        lines.append(f"| {r['run']} | {want:g} | {r['choice']:g} | {r['alpha_mean']:.2f} | {r['alpha_last']:.2f} | "
                     f"{positive}/{len(r['cosines'])} | {r['seconds']:.1f} |")
    lower = sum(1 for r in rows if r["choice"] < grid[r["run"]])
    lines.append(f"\nSame λ as `lm_autor` in {same} of {len(rows)} cells; a smaller λ in {lower}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("work/bench_lm_fifth"), help="bench_lm's --work")
    ap.add_argument("--variant", default="lm_autor", help="the grid judge to compare with (its manifests' λ)")
    ap.add_argument("--runs", default="", help="comma-separated run folders (default: every run with the variant)")
    ap.add_argument("--out", type=Path, required=True, help="JSONL of the fits (appended; done runs are skipped)")
    ap.add_argument("--eta", type=float, default=0.25)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--table", action="store_true", help="print the comparison of the fits in --out and exit")
    ap.add_argument("--section", type=Path, help="write the comparison as section lm-online-weight of this file "
                    "(BENCHMARKS.md) and exit")
    args = ap.parse_args()
    grid = cells(args.work, args.variant)
    done = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    if args.table or args.section:
        text = table([r for r in done if r["run"] in grid], grid)
        if args.section:
            from benchmarks.report import write_section

            body = ("One LoRA fit per cell on the first of auto's 3 folds, its mixture weight α = λ/(1+λ) learned "
                    "while it trains (sign steps of 0.25 on logit α from the held-out gradient's cosine with "
                    "g_S − g_A in Adam's metric, every 4 steps; 64 tokens, lr 0.002, batch 16, rank 8), against the "
                    f"λ that `{args.variant}` chose on the same cell. `fit s`: the fit's seconds (classifier "
                    "selection included). A prototype, not in the product (docs/albat-design.md round fifteen).\n\n")
            write_section(args.section, "lm-online-weight", "Language-model track: one fit that learns λ "
                          "(lm-online-weight, prototype)", body + text)
        else:
            print(text)
        return
    model_dir = next((args.work / "backbone").iterdir())
    names = [r for r in args.runs.split(",") if r] or list(grid)
    for name in names:
        if any(r["run"] == name and r["fold"] == args.fold for r in done):
            continue
        seed, budget = run_cell_args(name)
        row = online_fit(args.work / "runs" / name, model_dir, seed, budget, args)
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps({k: row[k] for k in ("run", "choice", "alpha_mean", "seconds")}), flush=True)


if __name__ == "__main__":
    main()
