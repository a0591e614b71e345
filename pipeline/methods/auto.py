"""`auto`: choose the selection method per task by cross-validation on the adaptation set.

The best baseline changes from task to task (BENCHMARKS.md), so `auto` asks the adaptation set:
1. split it into `folds` seeded folds (`assign_folds`);
2. for each fold and each candidate method (`methods`), select on the other folds only (their own
   candidate pairs, budget m scaled to the fold's share: `fold_budget`), fit the cheap contrastive
   judge (the residual adapter, `judge_steps` fixed steps) on those folds plus the selection with
   weight λ, and score the held-out fold: MRR of its queries against its own documents plus
   `distractors` seeded backbone documents (`score=mrr`), or its mean InfoNCE loss (`score=loss`);
3. after `stop_after` folds [2], stop when one candidate beats every other on every fold so far
   (`clear_leader`: more folds would rarely change the choice, and each costs a judge fit per candidate);
4. pick the method with the best mean fold score (`choose`; ties to the earlier method in `methods`;
   with `prefer=METHOD`, that method unless the best beats it on every fold) and run it on the full
   adaptation set at budget m.

With `lambdas` (e.g. "0 1 4") the judge is fitted at every λ of the grid and auto picks the (method, λ)
with the best mean (`choose_weight`; ties to the smaller λ); the chosen λ is written into the rows' w_b
(emit's backbone_weight stays 1), and λ = 0 means the adaptation set alone did best: nothing is kept.
`judge=lm` replaces the contrastive judge by LoRA on the causal LM in `model=` (pipeline/methods/
lm_judge.py), scored by minus the held-out log-perplexity: the judge for language-model adaptation.
Every fold score, the means, spreads and the choice go to the filter record (`auto`), and so to the
manifest's `selection`. Blocked ids stay blocked in every fold: near-duplicates of a held-out
example can never be selected for its own fold.

Options: `methods` [albat,knn,dsir,classifier,random; judge=lm: classifier, and `lambdas` 0 1 4, unless
given, `drop_z` 3 (LM_PRESET); `none` may be added, but the short fold judge
favours it: on the selection benchmark auto with none chose it in 3 of its first 4 cells, where the
full judge ranked none last], `folds` [3], `stop_after` [2; 0: every fold], `drop_z` [0: off; judge=lm: a
race that drops a candidate whose held-out texts trail the leader's by a paired t above it], `score` [mrr], `judge_steps`
[50], `judge_lr` [1e-3], `backbone_weight` [1.0] (λ of the judge), `bank_size` [128], `distractors`
[512], `view_sigma` [1.0], `prefer` [none: plain best mean], `lambdas` [empty: backbone_weight only],
`judge` [contrastive], `model`, `judge_batch_size`, `fold_scale`, `judge_layers`, `max_length`, `lora_rank`, `lora_alpha`,
`target_modules`, `device` (judge=lm); any option of a candidate method as `METHOD.KEY` (e.g. `albat.beta=0.5`).
`dsir` runs with `pool=candidates` unless `dsir.pool` says otherwise: scoring the whole corpus once per
fold would cost more than every other method together.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from albat.pipeline.methods.base import SelectionMethod, SelectionRequest, SelectionResult, get_method
from albat.pipeline.options import FLOAT, INT, STR, Option, resolve
from albat.stores.errors import AlbatError

AUTO_OPTIONS = (
    Option("methods", STR, "albat,knn,dsir,classifier,random", "candidate methods, separated by commas or spaces "
           "(judge=lm: classifier unless given)"),
    Option("folds", INT, 3, "folds of the adaptation set", min=2),
    Option("stop_after", INT, 2, "stop the cross-validation after this many folds when one (method, λ) beats every "
           "other on every fold so far (0: always run every fold)", min=0),
    Option("drop_z", FLOAT, 0.0, "judge=lm: after each fold, drop a candidate whose held-out texts score below the "
           "leader's by more than this many standard errors (paired over the texts; a race); 0: off (judge=lm: 3 "
           "unless given)", min=0),
    Option("score", STR, "mrr", "held-out score of the fold judge: mrr or loss", choices=("mrr", "loss")),
    Option("judge_steps", INT, 50, "training steps of the fold judge (judge=lm: the steps your training will take; "
           "each fold trains its share of them)", min=1),
    Option("judge_lr", FLOAT, 1e-3, "learning rate of the fold judge", above=0),
    Option("backbone_weight", FLOAT, 1.0, "λ of the fold judge's BAT loss", above=0),
    Option("bank_size", INT, 128, "fixed backbone negatives of the fold judge", min=1),
    Option("distractors", INT, 512, "backbone distractors of the held-out retrieval", min=0),
    Option("view_sigma", FLOAT, 1.0, "single-column data: noise norm of the second view", min=0),
    Option("prefer", STR, "", "keep this method unless another beats it on every fold (empty: best mean)"),
    Option("lambdas", STR, "", "λ grid (commas or spaces) to choose from with the method (0: add nothing); the "
           "chosen λ is folded into the rows' weight w_b, so leave emit's backbone_weight at 1 (empty: "
           "backbone_weight only, nothing folded; judge=lm: 0 1 4 unless given)"),
    Option("judge", STR, "contrastive", "fold judge: contrastive (residual adapter on the store's embeddings) or "
           "lm (LoRA on the causal LM in model=, scored by minus the held-out log-perplexity)",
           choices=("contrastive", "lm")),
    Option("model", STR, "", "judge=lm: local Hugging Face causal-LM checkpoint directory (nothing is downloaded)",
           metavar="DIR", path=True),
    Option("judge_batch_size", INT, 16, "judge=lm: LoRA batch size (your training's)", min=1),
    Option("fold_scale", STR, "passes", "judge=lm: a fold's steps: passes (as many passes over its rows as your "
           "training will make) or steps (judge_steps scaled to the fold's share, round eleven)",
           choices=("passes", "steps")),
    Option("judge_layers", INT, 0, "judge=lm: LoRA on the top k decoder layers only, the layers below run once per "
           "text and cached (cheaper, less faithful); 0: every layer, the exact fit", min=0),
    Option("max_length", INT, 128, "judge=lm: tokens per text, BOS included", min=2),
    Option("lora_rank", INT, 8, "judge=lm: LoRA rank", min=1),
    Option("lora_alpha", FLOAT, 16.0, "judge=lm: LoRA alpha", above=0),
    Option("target_modules", STR, "", "judge=lm: comma-separated LoRA targets (empty: peft's default)"),
    Option("device", STR, "auto", "judge=lm: auto (CUDA when present), cpu, cuda, cuda:N"),
)
DEFAULTS: dict[str, Any] = {o.name: o.default for o in AUTO_OPTIONS}
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {"dsir": {"pool": "candidates"}}


def assign_folds(n: int, folds: int, seed: int) -> np.ndarray:
    """Fold id (0..folds-1) per row of n: a seeded permutation dealt round-robin, so sizes differ
    by at most one. Needs at least 2 rows per fold."""
    if folds < 2 or n < 2 * folds:
        raise AlbatError(f"method auto: {n} adaptation examples cannot make {folds} folds of at least 2 "
                         "(lower auto's folds option, minimum 2, or add adaptation examples)")
    out = np.empty(n, np.int64)
    out[np.random.default_rng([seed, 29]).permutation(n)] = np.arange(n) % folds
    return out


def fold_budget(budget: int, n_train: int, n: int) -> int:
    """The budget on a fold's training part: m scaled to its share of the adaptation set (≥ 1 if m ≥ 1)."""
    return 0 if budget == 0 else max(1, int(round(budget * n_train / n)))


def fold_budgets(budget: int, n: int, folds: int, seed: int) -> list[int]:
    """The budget each fold's training part gets."""
    fold_of = assign_folds(n, folds, seed)
    return [fold_budget(budget, int(np.sum(fold_of != f)), n) for f in range(folds)]


@dataclass
class MethodScores:
    name: str
    scores: list[float] = field(default_factory=list)  # one per fold (higher is better)
    tiebreak: list[float] = field(default_factory=list)  # per fold: minus the held-out loss (breaks MRR ties)
    seconds: list[float] = field(default_factory=list)  # selection time per fold
    error: str | None = None  # why the method could not run on some fold, or was dropped (then it is not chosen)
    texts: list[np.ndarray] = field(default_factory=list)  # per fold: each held-out text's score (drop_z's race)

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores)) if self.scores and self.error is None else float("-inf")

    @property
    def key(self) -> tuple[float, float]:
        """What `choose` ranks by: the mean score, then the mean tie-break."""
        return (self.mean, float(np.mean(self.tiebreak)) if self.tiebreak and self.error is None else float("-inf"))

    @property
    def std(self) -> float:
        return float(np.std(self.scores, ddof=1)) if len(self.scores) > 1 else 0.0

    def row(self) -> dict[str, Any]:
        return {"method": self.name, "fold_scores": [round(s, 6) for s in self.scores],
                "fold_tiebreak": [round(s, 6) for s in self.tiebreak],
                "mean": round(self.mean, 6) if self.error is None else None, "std": round(self.std, 6),
                "select_seconds": round(float(np.sum(self.seconds)), 3), "error": self.error}


def choose(table: list[MethodScores], prefer: str = "") -> MethodScores:
    """The method with the highest mean fold score, then the highest mean tie-break (minus the held-out
    loss: held-out MRR saturates on easy tasks); exact ties go to the earlier one in `table`.

    With `prefer` (a method in the table), keep it unless the best beats it on every fold: the folds
    are paired (the same split for every method), and on a few held-out examples a mean alone is
    mostly noise."""
    runnable = [t for t in table if t.error is None]
    if not runnable:
        raise AlbatError("method auto: no candidate method ran on every fold: "
                         + "; ".join(f"{t.name}: {t.error}" for t in table))
    best = max(runnable, key=lambda t: t.key)  # max keeps the first of equal keys
    default = next((t for t in runnable if t.name == prefer), None)
    if default is None or default is best:
        return best
    return best if all(b > d for b, d in zip(best.scores, default.scores)) else default


def arms(tables: dict[float, list[MethodScores]]) -> list[MethodScores]:
    """The distinct candidates of a λ grid's tables: every runnable (method, λ > 0), and λ = 0 once (every
    method's λ = 0 row is the same fit, the fold alone)."""
    out = []
    for lam in sorted(tables):
        rows = [t for t in tables[lam] if t.error is None]
        out += rows[:1] if lam == 0 else rows
    return out


def clear_leader(candidates: list[MethodScores]) -> bool:
    """Whether the best candidate (by `MethodScores.key`) beats every other one on every fold scored so
    far: the folds are paired, so more folds would change the choice only if it lost on them what it won
    on all of these. `stop_after` ends the cross-validation there (docs/albat-design.md round fourteen:
    on 43 language-model runs the choice never changed and 36 stopped after 2 of 3 folds). One candidate
    or none: nothing left to choose."""
    if len(candidates) < 2:
        return True
    best = max(candidates, key=lambda t: t.key)
    return all(all(b > o for b, o in zip(best.scores, other.scores)) for other in candidates if other is not best)


def paired_t(leader: np.ndarray, other: np.ndarray) -> float:
    """mean(d) / (std(d)/√n) of the paired differences d = leader − other over the held-out rows scored so
    far (higher is better for both); +inf when every d is equal and positive, 0 for fewer than 2 rows."""
    d = np.asarray(leader, np.float64) - np.asarray(other, np.float64)
    if len(d) < 2:
        return 0.0
    sd = float(np.std(d, ddof=1))
    if sd == 0:
        return math.inf if d.mean() > 0 else 0.0
    return float(d.mean() / (sd / math.sqrt(len(d))))


def losers(rows: dict[Any, np.ndarray], keys: dict[Any, tuple[float, float]], z: float,
           min_rows: int = 4) -> tuple[Any, list[Any]]:
    """(leader, the candidates to drop) in a race: the leader has the best `keys` (as `choose` ranks);
    dropped are those whose per-row held-out scores (`rows`, every fold so far concatenated, the same rows
    for all) trail the leader's by a paired t above `z`, once at least `min_rows` rows were scored. A
    dropped candidate is never fitted again and cannot be chosen. No rows: (None, [])."""
    if not rows:
        return None, []
    leader = max(rows, key=lambda k: keys[k])
    return leader, [k for k, r in rows.items()
                    if k != leader and len(r) >= min_rows and paired_t(rows[leader], r) > z]


def parse_lambdas(text: str) -> list[float]:
    """The `lambdas` grid, split on commas or spaces: "0, 1,4" or "0 1 4" -> [0.0, 1.0, 4.0] (sorted, no
    repeats); empty text -> []."""
    values = []
    for item in str(text).replace(",", " ").split():
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise AlbatError(f"method auto: lambdas={text!r}: {item!r} is not a finite number >= 0; "
                             "write e.g. lambdas=0,1,4")
        values.append(value)
    return sorted(set(values))


def choose_weight(tables: dict[float, list[MethodScores]], prefer: str = "") -> tuple[float, MethodScores]:
    """The (λ, method) with the best fold scores over a λ grid: `choose` within each λ, then the best
    key across λ; exact ties go to the smaller λ (add less). At λ = 0 every method trains on the fold
    alone, so its choice stands for "add nothing"."""
    best: tuple[float, MethodScores] | None = None
    for lam in sorted(tables):
        try:
            pick = choose(tables[lam], prefer)
        except AlbatError:
            continue
        if best is None or pick.key > best[1].key:
            best = (lam, pick)
    if best is None:
        raise AlbatError("method auto: no candidate method ran on every fold at any λ: "
                         + "; ".join(f"{t.name}: {t.error}" for t in next(iter(tables.values()))))
    return best


def weight_verdict(tables: dict[float, list[MethodScores]]) -> dict[str, Any]:
    """With λ = 0 in the grid: does the best λ > 0 beat adding nothing by more than the larger fold spread?"""
    if 0.0 not in tables or len(tables) < 2:
        return {}
    if all(t.error is not None for k, v in tables.items() if k > 0 for t in v):  # every λ > 0 dropped in a race
        return {"best": None, "lambda": None, "helps": False, "margin": None, "spread": None}
    lam, best = choose_weight({k: v for k, v in tables.items() if k > 0})
    if all(t.error is not None for t in tables[0.0]):  # dropped in a race (drop_z): adding beat it clearly
        return {"best": best.name, "lambda": lam, "helps": True, "margin": None, "spread": None}
    alone = choose(tables[0.0])
    margin, spread = best.mean - alone.mean, max(best.std, alone.std)
    return {"best": best.name, "lambda": lam, "helps": bool(margin > spread), "margin": round(margin, 6),
            "spread": round(spread, 6)}


def augmentation_verdict(table: list[MethodScores]) -> dict[str, Any]:
    """Does the best method beat `none` by more than the larger of their fold spreads (std)?"""
    best = choose(table)
    none = next((t for t in table if t.name == "none" and t.error is None), None)
    if none is None:
        return {"best": best.name, "helps": None, "margin": None, "spread": None}
    margin, spread = best.mean - none.mean, max(best.std, none.std)
    return {"best": best.name, "helps": bool(margin > spread), "margin": round(margin, 6), "spread": round(spread, 6)}


def fold_request(request: SelectionRequest, train: np.ndarray, budget: int, options: dict[str, Any]) -> SelectionRequest:
    """The request as if the adaptation set were only rows `train`: their pairs (query_idx renumbered),
    the candidates those pairs retrieve, the same blocked ids."""
    from albat.pipeline.query import aggregate_candidates

    train = np.sort(np.asarray(train, np.int64))
    q = request.pairs.column("query_idx").to_numpy()
    pairs = request.pairs.filter(pa.array(np.isin(q, train)))
    renumber = np.full(len(request.adaptation_vectors), -1, np.int64)
    renumber[train] = np.arange(len(train))
    pairs = pairs.set_column(pairs.column_names.index("query_idx"), "query_idx",
                             pa.array(renumber[pairs.column("query_idx").to_numpy()].astype(np.int32)))
    reasons = dict(zip(request.candidates.column("candidate_id").to_pylist(),
                       request.candidates.column("block_reason").to_pylist()))
    blocked = pa.table({"id": pa.array(request.blocked_ids, pa.int64()),
                        "reason": pa.array([reasons.get(int(i)) or "blocked" for i in request.blocked_ids], pa.string())})
    pair_vectors = None if request.adaptation_pair_vectors is None else request.adaptation_pair_vectors[train]
    return SelectionRequest(candidates=aggregate_candidates(pairs, blocked), pairs=pairs, blocked_ids=request.blocked_ids,
                            store=request.store, adaptation_texts=[request.adaptation_texts[i] for i in train],
                            adaptation_vectors=request.adaptation_vectors[train], budget=budget, seed=request.seed,
                            adaptation_pair_vectors=pair_vectors)


def heldout_scores(W, held, distractors) -> tuple[float, float]:
    """(MRR, mean InfoNCE loss) of held-out pairs: query i must find document i among the held-out
    documents and the distractor documents; the loss uses the same candidates."""
    import torch

    from albat.pipeline.surrogates.contrastive import SCALE, adapt

    with torch.no_grad():
        q = adapt(torch.from_numpy(held.query), W)
        d = adapt(torch.from_numpy(np.concatenate([held.doc, distractors.doc])), W)
        sims = q @ d.T
        right = sims.diagonal()
        rank = (sims > right[:, None]).sum(1)
        loss = torch.logsumexp(SCALE * sims, 1) - SCALE * right
    return float((1.0 / (rank + 1).float()).mean()), float(loss.mean())


def split_options(options: dict[str, Any], methods: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """auto's own options, and `METHOD.KEY` options per candidate method (an unknown method is an error)."""
    own, per = {}, {m: dict(METHOD_DEFAULTS.get(m, {})) for m in methods}
    for key, value in options.items():
        name, dot, sub = key.partition(".")
        if not dot:
            own[key] = value
        elif name in per:
            per[name][sub] = value
        else:
            raise AlbatError(f"method auto: option {key} names {name}, which is not among methods={','.join(methods)}")
    return own, per


class Judge:
    """The cheap contrastive judge of the folds: a seeded backbone bank (negatives) and distractors,
    disjoint from the candidates and blocked rows."""

    def __init__(self, request: SelectionRequest, opts: dict[str, Any]):
        from albat.pipeline.methods.ranked import candidate_columns
        from albat.pipeline.methods.surrogate_inputs import adaptation_pairs, bank_ids, store_pairs

        ids, _, _ = candidate_columns(request.candidates)
        drawn = bank_ids(request.store, opts["bank_size"] + opts["distractors"],
                         np.concatenate([request.blocked_ids, ids]), request.seed + 5)
        sample = store_pairs(request.store, drawn, opts["view_sigma"], request.seed + 6)
        self.bank = sample.take(np.arange(min(opts["bank_size"], len(drawn))))
        self.distractors = sample.take(np.arange(min(opts["bank_size"], len(drawn)), len(drawn)))
        self.adaptation = adaptation_pairs(request, opts["view_sigma"])
        self.store_pairs = lambda kept: store_pairs(request.store, kept, opts["view_sigma"], request.seed + 7)
        self.opts, self.seed = opts, request.seed

    def score(self, train: np.ndarray, held: np.ndarray, kept: np.ndarray, lam: float) -> tuple[float, float]:
        """(MRR, −loss) on `held` of the judge trained on `train` plus the kept backbone ids."""
        from albat.pipeline.surrogates.contrastive import train_adapter

        extra = self.store_pairs(kept) if len(kept) else None
        W, _ = train_adapter(self.adaptation.take(train), self.bank, steps=self.opts["judge_steps"],
                             lr=self.opts["judge_lr"], batch_size=64, seed=self.seed, extra=extra, backbone_weight=lam)
        mrr, loss = heldout_scores(W, self.adaptation.take(held), self.distractors)
        return mrr, -loss


def cross_validate(request: SelectionRequest, methods: list[str], per_method: dict[str, dict[str, Any]],
                   opts: dict[str, Any], budgets: list[int], lams: list[float]
                   ) -> dict[tuple[int, float], list[MethodScores]]:
    """Fold scores of every method at every (budget, λ): selections once per (method, fold, budget),
    one judge fit per λ. The score is held-out MRR, or minus the held-out loss (`score=loss`). With
    `stop_after` = k > 0, the folds after the k-th are skipped once every budget has a `clear_leader`:
    then every row holds k (or more) fold scores."""
    import torch

    if opts["score"] not in ("mrr", "loss"):
        raise AlbatError(f"method auto: score={opts['score']!r}; choose mrr or loss")
    n = len(request.adaptation_vectors)
    fold_of = assign_folds(n, opts["folds"], request.seed)
    lm = opts.get("judge") == "lm"
    if lm:
        from albat.pipeline.methods.lm_judge import LmJudge
    judge = LmJudge(request, opts) if lm else Judge(request, opts)
    pick = 1 if lm or opts["score"] == "loss" else 0
    out = {(m, lam): [MethodScores(name) for name in methods] for m in budgets for lam in lams}
    race = lm and opts["drop_z"] > 0 and opts["stop_after"] > 0
    threads = torch.get_num_threads()
    if not lm:
        torch.set_num_threads(1)  # small matrices: a second thread only contends
    try:
        for fold in range(opts["folds"]):
            train, held = np.nonzero(fold_of != fold)[0], np.nonzero(fold_of == fold)[0]
            for budget in budgets:
                for i, name in enumerate(methods):
                    sub = fold_request(request, train, fold_budget(budget, len(train), n), per_method[name])
                    clock = time.perf_counter()
                    try:
                        result = get_method(name, **per_method[name]).select(sub)
                    except AlbatError as exc:
                        for lam in lams:
                            out[(budget, lam)][i].error = f"fold {fold}: {exc}"
                        continue
                    seconds = time.perf_counter() - clock
                    kept = result.ids[result.keep]
                    for lam in lams:
                        row = out[(budget, lam)][i]
                        if row.error is not None:  # dropped in the race
                            continue
                        scores = judge.score(train, held, kept if lam > 0 else kept[:0], lam)
                        row.scores.append(scores[pick])
                        row.tiebreak.append(scores[1])
                        row.seconds.append(seconds)
                        if race:
                            row.texts.append(judge.row_scores(train, held, kept if lam > 0 else kept[:0], lam))
            done = fold + 1
            tables = [{lam: out[(budget, lam)] for lam in lams} for budget in budgets]
            if race:
                for table in tables:
                    drop_losers(table, opts["drop_z"], done)
            if opts["stop_after"] and done < opts["folds"]:
                left = [arms(table) for table in tables]  # one left after a race needs no second fold
                if all(clear_leader(c) and (done >= opts["stop_after"] or (race and len(c) == 1)) for c in left):
                    break
    finally:
        torch.set_num_threads(threads)
    return out


def drop_losers(tables: dict[float, list[MethodScores]], z: float, done: int) -> None:
    """The race's step after a fold (`drop_z`), on one budget's tables: mark the `losers` as dropped (their
    `error`, so they are neither fitted again nor chosen). The λ = 0 rows of every method are one
    candidate, the fold alone."""
    groups: dict[tuple[float, str], list[MethodScores]] = {}
    for lam, table in tables.items():
        for row in table:
            if row.error is None and row.texts:
                groups.setdefault((lam, row.name if lam else ""), []).append(row)
    leader, dropped = losers({c: np.concatenate(g[0].texts) for c, g in groups.items()},
                             {c: g[0].key for c, g in groups.items()}, z)
    if not dropped:
        return
    name = f"{leader[1]} at λ = {leader[0]:g}" if leader[0] else "the fold alone (λ = 0)"
    for c in dropped:
        for row in groups[c]:
            row.error = f"dropped after fold {done}: below {name} on the held-out texts by more than {z:g} standard errors"


def check_options(name: str, options: dict[str, Any]) -> None:
    """Unknown or bad options of a candidate method are errors before any work: the method's own
    declared OPTIONS decide (building it checks them)."""
    get_method(name, **options)


LM_PRESET = {"methods": "classifier", "lambdas": "0 1 4", "drop_z": 3.0}  # judge=lm's defaults (README)


def auto_options(options: dict[str, Any]) -> tuple[list[str], dict[str, Any], dict[str, dict[str, Any]]]:
    """(candidate methods, auto's own checked options, each candidate's options), every value checked.
    With judge=lm, `methods`, `lambdas` and `drop_z` not given default to LM_PRESET: the classifier's rows
    with their weight chosen from λ ∈ {0, 1, 4} in a race at 3 standard errors, the configuration measured
    on the language-model track (docs/albat-design.md rounds eleven to fourteen); five methods at one λ
    would cost five LoRA fits per fold and choose only the rows, which matter less there than the weight."""
    if str(options.get("judge", "")).strip() == "lm":
        options = {**LM_PRESET, **options}
    methods = parse_methods(options.get("methods", DEFAULTS["methods"]))
    own, per_method = split_options(options, methods)
    opts = resolve(AUTO_OPTIONS, own, "method auto")
    if opts["judge"] == "lm" and not opts["model"]:  # auto and `albat diagnose` both fail before any work
        raise AlbatError("method auto: judge=lm needs model=DIR, the local causal-LM checkpoint you will adapt "
                         "(--method-option model=DIR)")
    for name in methods:  # unknown options of a candidate method fail before any work
        check_options(name, per_method[name])
    return methods, opts, per_method


def parse_methods(text: str) -> list[str]:
    from albat.pipeline.methods.base import REGISTRY

    methods = str(text).replace(",", " ").split()  # commas or spaces, like `lambdas`
    bad = [m for m in methods if m not in REGISTRY or m == "auto"]
    if not methods or bad:
        raise AlbatError(f"method auto: methods={text!r}: {', '.join(bad) or 'empty'} cannot be chosen; "
                         f"pick from {', '.join(sorted(set(REGISTRY) - {'auto'}))}")
    if len(set(methods)) != len(methods):
        raise AlbatError(f"method auto: methods={text!r} names a method twice")
    return methods


class AutoMethod(SelectionMethod):
    """Its options are its own (AUTO_OPTIONS) and `METHOD.KEY` for each candidate method, checked
    by that method's declared OPTIONS."""

    name = "auto"
    OPTIONS = AUTO_OPTIONS
    PREFIXED_OPTIONS = True  # [filter] keys METHOD.KEY pass to the candidate method, which checks them

    def __init__(self, **options: Any):
        self.methods, self.opts, self.per_method = auto_options(options)
        self.grid = parse_lambdas(self.opts["lambdas"])  # a bad grid fails before any work
        self.options = {**self.opts, **{k: v for k, v in options.items() if "." in k}}

    def select(self, request: SelectionRequest) -> SelectionResult:
        methods, opts, per_method = self.methods, self.opts, self.per_method
        if opts["prefer"] and opts["prefer"] not in methods:
            raise AlbatError(f"method auto: prefer={opts['prefer']!r} is not among methods={','.join(methods)}")
        grid = self.grid
        lams = grid or [opts["backbone_weight"]]
        clock = time.perf_counter()
        results = cross_validate(request, methods, per_method, opts, [request.budget], lams)
        cv_seconds = time.perf_counter() - clock
        tables = {lam: results[(request.budget, lam)] for lam in lams}
        lam, chosen = choose_weight(tables, opts["prefer"])
        folds_run = max(len(t.scores) for table in tables.values() for t in table)
        judged = "minus the held-out log-perplexity" if opts["judge"] == "lm" else f"held-out {opts['score']}"
        if lam == 0:
            result = get_method("none").select(request)
            note = (f" (auto: λ = 0 scored best, {judged} {chosen.mean:.4f} over {folds_run} folds: adding "
                    "backbone rows at any λ of the grid did worse on the held-out folds than the adaptation set alone)")
        else:
            result = get_method(chosen.name, **per_method[chosen.name]).select(request)
            if grid:  # the chosen λ is carried by w_b; emit's backbone_weight stays 1
                result.weight = lam * (np.ones(len(result.ids)) if result.weight is None else result.weight)
            note = f" (auto chose {chosen.name}" + (f" at λ = {lam:g}" if grid else "") + \
                f": mean {judged} {chosen.mean:.4f} over {folds_run} folds)"
        result.reason = [r + note for r in result.reason]
        table = tables[lam]
        result.report = {"auto": {"choice": "none" if lam == 0 else chosen.name, "prefer": opts["prefer"],
                                  "judge": opts["judge"], "score": "loss" if opts["judge"] == "lm" else opts["score"],
                                  "folds": opts["folds"], "folds_run": folds_run, "stop_after": opts["stop_after"],
                                  "judge_steps": opts["judge_steps"],
                                  **({"judge_batch_size": opts["judge_batch_size"], "fold_scale": opts["fold_scale"],
                                      "judge_layers": opts["judge_layers"]}
                                     if opts["judge"] == "lm" else {}),
                                  "backbone_weight": lam,
                                  "fold_budgets": fold_budgets(request.budget, len(request.adaptation_vectors),
                                                               opts["folds"], request.seed),
                                  "seed": request.seed, "table": [t.row() for t in table],
                                  "verdict": augmentation_verdict(table), "cv_seconds": round(cv_seconds, 3),
                                  **({"lambdas": lams, "lambda": lam, "weight_verdict": weight_verdict(tables),
                                      "tables": [{"lambda": x, "table": [t.row() for t in tables[x]]} for x in lams]}
                                     if grid else {})},
                         "chosen_report": result.report}
        return result
