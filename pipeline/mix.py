"""Stage mix (between filter and emit, only when asked): mixture weights for the selection's groups
by Mixtures of Data Experts (the formulas are in `pipeline.mixture`).

    group    the kept rows by a store column (`--mix-group-by`) or k-means of their vectors
    experts  one surrogate per group (a contrastive adapter, or an lm LoRA), trained on that
             group's rows alone; its log-likelihood of every adaptation unit (pair, or token)
    weights  argmin over the simplex of the loss of the w-mixture of the experts' predictions;
             with `--calibration-runs N`, N real surrogate runs on seeded random mixtures refit
             the estimate by regression, as the paper does

Writes `mix/weights.parquet` (group, label, rows, share of the selection, weight),
`mix/groups.parquet` (id -> group) and `mix/log_lik.npy` (the experts' log-likelihoods of the
adaptation units, so any other mixture can be estimated: `pipeline.mixture.mixture_nll`). `emit`
then multiplies each selected row's `albat_weight` by `pipeline.mixture.row_multipliers`, which
gives group g the share w_g of the backbone weight and keeps its total.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from albat.pipeline.filter import SELECTION_FILE, build_request
from albat.pipeline.mixture import (calibrated_weights, dirichlet_mixtures, fit_mixture_weights, mixture_nll,
                                    row_multipliers)
from albat.pipeline.options import resolve
from albat.pipeline.progress import progress_bar
from albat.pipeline.stage import Plan, Stage
from albat.pipeline.surrogates.options import SURROGATE_OPTIONS
from albat.pipeline.threads import SMALL_OP_THREADS, torch_threads
from albat.stores.errors import AlbatError
from albat.stores.tables import read_table, write_array, write_table
from albat.stores.workdir import Workdir, fingerprint

WEIGHTS_FILE = "weights.parquet"
GROUPS_FILE = "groups.parquet"
LOG_LIK_FILE = "log_lik.npy"  # (groups, units): expert g's log-likelihood of adaptation unit i


def kept_selection(work: Workdir) -> tuple[np.ndarray, np.ndarray]:
    """(ids, w_b) of the kept rows in selection order, as emit writes them."""
    table = read_table(work.filter / SELECTION_FILE, "filter")
    table = table.filter(table.column("keep")).sort_by("selection_rank")
    weight = table.column("weight").to_numpy(zero_copy_only=False) if "weight" in table.column_names else None
    ids = table.column("id").to_numpy()
    return ids, np.ones(len(ids)) if weight is None else weight.astype(np.float64)


def groups_by_value(values: list[Any]) -> tuple[np.ndarray, list[str]]:
    """Group index of each row and the labels, groups ordered by label (null -> "(null)")."""
    shown = ["(null)" if v is None else str(v) for v in values]
    labels = sorted(set(shown))
    position = {label: g for g, label in enumerate(labels)}
    return np.array([position[s] for s in shown], dtype=np.int64), labels


def first_seen_order(assign: np.ndarray) -> np.ndarray:
    """Cluster numbers renumbered by first appearance, so labels do not depend on k-means' numbering."""
    order = {c: g for g, c in enumerate(dict.fromkeys(assign.tolist()))}
    return np.array([order[c] for c in assign.tolist()], dtype=np.int64)


def kmeans_groups(vectors: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, list[str]]:
    import faiss

    k = max(1, min(k, len(vectors)))
    kmeans = faiss.Kmeans(vectors.shape[1], k, niter=25, seed=seed, verbose=False, min_points_per_centroid=1,
                          max_points_per_centroid=1 << 20)
    kmeans.train(np.ascontiguousarray(vectors, dtype=np.float32))
    _, assign = kmeans.index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    groups = first_seen_order(assign[:, 0])
    return groups, [f"cluster-{g}" for g in range(int(groups.max()) + 1)]


def surrogate_options(options: dict[str, Any]) -> dict[str, Any]:
    opts = resolve(SURROGATE_OPTIONS, {k: options[k] for k in ("surrogate", "model", "steps")}, "[mix]")
    if opts["surrogate"] == "lm" and not opts["model"]:
        raise AlbatError("mix: lm experts need a model: pass --mix-model DIR (a local Hugging Face causal-LM "
                         "checkpoint)")
    return opts


class MixStage(Stage):
    name = "mix"

    def plan(self) -> Plan:
        options, seed, work = self.config["mix"], int(self.config["seed"]), self.work
        filter_record = work.stage_record("filter")
        if not filter_record or not (work.filter / SELECTION_FILE).exists():
            raise AlbatError(f"{work.filter}: no completed filter stage; run `albat filter` first")
        surrogate_options(options)
        recorded = {k: v for k, v in options.items() if k != "enabled"}
        fp = fingerprint({"options": recorded, "seed": seed, "filter": filter_record["fingerprint"]})
        return Plan(fp, (work.mix / WEIGHTS_FILE, work.mix / GROUPS_FILE, work.mix / LOG_LIK_FILE), recorded, {"seed": seed},
                    {"filter": filter_record["fingerprint"]})

    @staticmethod
    def _groups(options: dict[str, Any], request, ids: np.ndarray, seed: int) -> tuple[np.ndarray, list[str]]:
        column = options["group_by"]
        if column is None:
            return kmeans_groups(request.store.vectors_for_ids(ids), int(options["groups"]), seed)
        names = request.store.metadata(request.store.shard_indices()[0]).column_names
        if column not in names:
            raise AlbatError(f"mix.group_by: column '{column}' is not in the store (it holds {', '.join(names)}); "
                             "embed it with --keep-columns, or group by k-means (drop --mix-group-by)")
        return groups_by_value(request.store.texts_for_ids(ids, column))

    def compute(self, plan: Plan) -> dict[str, Any]:
        from albat.pipeline.methods.surrogate_inputs import build_surrogate

        seed = plan.inputs["seed"]
        started = time.perf_counter()
        ids, w_b = kept_selection(self.work)
        if len(ids) == 0:
            raise AlbatError(f"{self.work.filter / SELECTION_FILE}: the selection keeps no row; nothing to mix")
        request = build_request(self.config, self.work, len(ids), seed)
        groups, labels = self._groups(plan.recorded, request, ids, seed)
        opts = surrogate_options(plan.recorded)
        candidates = request.candidates.column("candidate_id").to_numpy()
        with torch_threads(0 if opts["surrogate"] == "lm" else SMALL_OP_THREADS):
            surrogate, adaptation, examples = build_surrogate(request, opts, np.concatenate([request.blocked_ids,
                                                                                             candidates]))

            def loss_units(rows: np.ndarray) -> np.ndarray:
                surrogate.fit(examples(ids[rows]), seed)
                return surrogate.unit_log_likelihoods(adaptation, "adapted")

            runs = int(plan.recorded["calibration_runs"])
            bar = progress_bar(len(labels) + runs, "mix: experts", self.show_progress, unit="fits")
            log_lik = []
            for g in range(len(labels)):
                log_lik.append(loss_units(np.nonzero(groups == g)[0]))
                bar.update(1)
            log_lik = np.stack(log_lik)
            weights, iterations = fit_mixture_weights(log_lik, int(plan.recorded["iterations"]))
            calibration: dict[str, Any] = {}
            if runs:
                tried = dirichlet_mixtures(len(labels), runs, seed)
                rng = np.random.default_rng([seed, 31])
                measured = []
                for w in tried:
                    p = w_b * row_multipliers(groups, w_b, w)
                    rows = np.sort(rng.choice(len(ids), size=len(ids), replace=True, p=p / p.sum()))
                    measured.append(float(-loss_units(rows).mean()))
                    bar.update(1)
                weights, coef = calibrated_weights(log_lik, tried, np.array(measured))
                calibration = {"tried": tried.round(6).tolist(), "measured": np.round(measured, 6).tolist(),
                               "estimated": [round(mixture_nll(log_lik, w), 6) for w in tried],
                               "coefficients": np.round(coef, 6).tolist()}
            bar.close()
        counts = np.bincount(groups, minlength=len(labels))
        shares = np.bincount(groups, weights=w_b, minlength=len(labels)) / w_b.sum()
        return {"ids": ids, "groups": groups, "labels": labels, "counts": counts, "shares": shares,
                "weights": weights, "estimate_at_shares": mixture_nll(log_lik, shares),
                "estimate_at_weights": mixture_nll(log_lik, weights), "iterations": iterations,
                "units": int(log_lik.shape[1]), "log_lik": log_lik, "calibration": calibration, "surrogate": opts["surrogate"],
                "seconds": time.perf_counter() - started}

    def write(self, plan: Plan, computed: dict[str, Any]) -> dict[str, Any]:
        c = computed
        self.work.mix.mkdir(parents=True, exist_ok=True)
        write_table(pa.table({"id": pa.array(c["ids"], pa.int64()), "group": pa.array(c["groups"], pa.int32())}),
                    self.work.mix / GROUPS_FILE)
        groups = len(c["labels"])
        write_array(c["log_lik"], self.work.mix / LOG_LIK_FILE)
        write_table(pa.table({
            "group": pa.array(np.arange(groups), pa.int32()), "label": pa.array(c["labels"], pa.string()),
            "rows": pa.array(c["counts"], pa.int64()), "share": pa.array(c["shares"], pa.float64()),
            "weight": pa.array(c["weights"], pa.float64()),
        }), self.work.mix / WEIGHTS_FILE)
        return {"groups": groups, "grouped_by": plan.recorded["group_by"] or f"k-means (k={plan.recorded['groups']})",
                "experts": c["surrogate"], "units": c["units"], "iterations": c["iterations"],
                "weights": {label: round(float(w), 6) for label, w in zip(c["labels"], c["weights"])},
                "estimated_loss": round(c["estimate_at_weights"], 6),
                "estimated_loss_at_shares": round(c["estimate_at_shares"], 6),
                "how": "mde+calibration" if c["calibration"] else "mde", "calibration": c["calibration"],
                "seed": plan.inputs["seed"], "seconds": round(c["seconds"], 3)}


def fresh_mix(work: Workdir, filter_fingerprint: str) -> dict[str, Any] | None:
    """The mix record when it was made from this selection and its files are present, else None."""
    record = work.stage_record("mix")
    if not record or (record.get("upstream") or {}).get("filter") != filter_fingerprint:
        return None
    if not work.finished_summary("mix", record["fingerprint"], *(work.mix / f for f in (WEIGHTS_FILE, GROUPS_FILE,
                                                                                         LOG_LIK_FILE))):
        return None
    return record


def mix_multipliers(work: Workdir, ids: np.ndarray, w_b: np.ndarray) -> np.ndarray:
    """emit's factor per selected row (in `ids` order) from the mix stage's files."""
    groups_table = read_table(work.mix / GROUPS_FILE, "mix")
    weights = read_table(work.mix / WEIGHTS_FILE, "mix").sort_by("group").column("weight").to_numpy()
    mixed = groups_table.column("id").to_numpy()
    order = np.argsort(mixed)
    at = np.searchsorted(mixed, ids, sorter=order)
    if len(ids) != len(mixed) or not np.array_equal(mixed[order[np.minimum(at, len(mixed) - 1)]], ids):
        raise AlbatError(f"{work.mix / GROUPS_FILE}: its ids are not the selection's; rerun `albat mix`")
    groups = groups_table.column("group").to_numpy()[order[at]]
    return row_multipliers(groups, w_b, weights)
