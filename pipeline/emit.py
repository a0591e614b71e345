"""Stage 5, emit: publish the selected rows (and optionally the adaptation set) as Parquet shards
with weights, provenance and a manifest that any trainer or DuckDB reads as-is.

Weights: a trainer minimising  sum_i albat_weight_i * loss_i / n_A  over the mixture minimises
the BAT loss  mean_A loss + lambda * mean_S w_b * loss,  because adaptation rows weigh 1 and a
selected backbone row b weighs  lambda * n_A / m * w_b  (m selected rows, w_b the method's weight).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import __version__
from pipeline.filter import SELECTION_FILE
from pipeline.stage import Plan, Stage
from stores.embedding_store import ID, ROW, SOURCE, EmbeddingStore
from stores.errors import AlbatError
from stores.index_store import read_infos
from stores.shard_store import MANIFEST, publish_shards, set_damage
from stores.tables import read_table
from stores.views import fetch_table, sql_literal
from stores.workdir import fingerprint

PROVENANCE = ["albat_id", "albat_method", "albat_score", "albat_weight", "albat_query", "albat_is_adaptation",
              "albat_source", "albat_row"]


def backbone_weights(w_b: np.ndarray, n_adaptation: int, lam: float) -> np.ndarray:
    """Per-row loss weights of the selected backbone rows (see the module docstring)."""
    m = len(w_b)
    return lam * n_adaptation / m * np.asarray(w_b, dtype=np.float64) if m else np.zeros(0)


def selected_rows(store: EmbeddingStore, selection_path: str) -> pa.Table:
    """Join the kept selection rows to the store's metadata with DuckDB, in selection order."""
    import duckdb

    sql = f"""
        SELECT m.* EXCLUDE (albat_text_hash), s.method AS albat_method, s.score AS albat_score,
               s.weight AS w_b, s.query_idx AS albat_query
        FROM read_parquet({sql_literal(store.meta_glob())}) m
        JOIN read_parquet({sql_literal(selection_path)}) s ON m.{ID} = s.id
        WHERE s.keep ORDER BY s.selection_rank"""
    with duckdb.connect() as con:
        return fetch_table(con, sql)


def assemble(backbone: pa.Table, adaptation: pa.Table | None, store_info: dict[str, Any],
             adaptation_text_column: str, lam: float, n_adaptation: int) -> pa.Table:
    """One table: user columns first, then albat provenance; adaptation rows (if given) flagged.
    `n_adaptation` is n_A of the weight formula, whether or not the adaptation rows are written."""
    n_adapt = adaptation.num_rows if adaptation is not None else 0
    user_cols = [c for c in backbone.column_names if c not in (ID, SOURCE, ROW, "albat_method", "albat_score",
                                                                "w_b", "albat_query")]
    query = backbone.column("albat_query").to_numpy(zero_copy_only=False)
    weights = backbone_weights(backbone.column("w_b").to_numpy(zero_copy_only=False), n_adaptation, lam)
    out = {c: backbone.column(c) for c in user_cols}
    out.update({
        "albat_id": backbone.column(ID),
        "albat_method": backbone.column("albat_method"),
        "albat_score": backbone.column("albat_score").cast(pa.float64()),
        "albat_weight": pa.array(weights, pa.float64()),
        "albat_query": pa.array(np.where(query >= 0, query, 0), pa.int32(), mask=query < 0),
        "albat_is_adaptation": pa.array(np.zeros(backbone.num_rows, bool)),
        "albat_source": backbone.column(SOURCE).cast(pa.string()),
        "albat_row": backbone.column(ROW),
    })
    table = pa.table(out)
    if adaptation is None or n_adapt == 0:
        return table
    text_column = store_info["text_column"]
    rows = {c: pa.nulls(n_adapt, table.schema.field(c).type) for c in table.column_names}
    rows[text_column] = adaptation.column(adaptation_text_column).cast(table.schema.field(text_column).type)
    rows["albat_method"] = pa.array(["adaptation"] * n_adapt, pa.string())
    rows["albat_weight"] = pa.array(np.ones(n_adapt), pa.float64())
    rows["albat_query"] = adaptation.column("query_idx").cast(pa.int32())
    rows["albat_is_adaptation"] = pa.array(np.ones(n_adapt, bool))
    rows["albat_source"] = adaptation.column("source").cast(pa.string())
    rows["albat_row"] = adaptation.column("row").cast(pa.int64())
    return pa.concat_tables([pa.table(rows, schema=table.schema), table])


def split_shards(table: pa.Table, shard_rows: int) -> list[pa.Table]:
    """Consecutive slices of `shard_rows` rows (>= 1, pipeline.options); one empty shard for no rows."""
    return [table.slice(start, shard_rows) for start in range(0, max(table.num_rows, 1), shard_rows)]


class EmitStage(Stage):
    name = "emit"

    def plan(self) -> Plan:
        options, work = self.config["emit"], self.work
        filter_record = work.stage_record("filter")
        if not filter_record or not (work.filter / SELECTION_FILE).exists():
            raise AlbatError(f"{work.filter}: no completed filter stage; run `albat filter` first")
        fp = fingerprint({"options": options, "filter": filter_record["fingerprint"]})
        return Plan(fp, (work.output / MANIFEST,), options, {"filter_record": filter_record})

    def finished(self, plan: Plan) -> dict[str, Any] | None:
        """Complete when the record matches and every shard the manifest names is as published."""
        done = super().finished(plan)
        return done if done is not None and set_damage(self.work.output) is None else None

    def compute(self, plan: Plan) -> tuple[list[pa.Table], dict[str, Any], int]:
        options, config, work, filter_record = plan.recorded, self.config, self.work, plan.inputs["filter_record"]
        store = EmbeddingStore(work.store)
        info = store.require_complete()
        for index in store.shard_indices():  # the join below reads every metadata shard
            store.check_shard(index, ("meta",))
        backbone = selected_rows(store, str(work.filter / SELECTION_FILE))
        adaptation = read_table(work.query / "adaptation.parquet", "query") if options["include_adaptation"] else None
        lam = float(options["backbone_weight"])
        query_summary = work.stage_record("query")["summary"]
        table = assemble(backbone, adaptation, info, config["query"]["text_column"], lam,
                         int(query_summary["adaptation"]))
        index_infos = read_infos(work.index)
        encoder = {k: v for k, v in info["encoder"].items() if k != "probe"}
        seed = int(config["seed"])
        manifest = {
            "format_version": 1, "created_by": f"albat {__version__}", "method": filter_record["summary"]["method"],
            "seed": seed, "seeds": {"index_sample": seed, "recall_sample": seed + 1, "filter": seed},
            "encoder": encoder, "index": {k: index_infos.get(k) for k in ("index_key", "nprobe", "recall_at_k", "recall_k")},
            "counts": {"corpus_rows": info["rows"], "candidates": query_summary["candidates"],
                       "blocked": query_summary["blocked"], "selected": backbone.num_rows,
                       "adaptation": adaptation.num_rows if adaptation is not None else 0},
            "weights": {"lambda": lam, "formula": "adaptation rows 1; backbone rows lambda * n_A / m * w_b"},
            "columns": {"text": info["text_column"], "id": info["id_column"], "keep": info["keep_columns"],
                        "provenance": PROVENANCE},
            "stages": {s: (work.stage_record(s) or {}).get("fingerprint") for s in ("index", "query", "filter")},
            "selection": filter_record["summary"],  # the method's own report: thresholds, timings, surrogate fit
            "config": config,
        }
        return split_shards(table, int(options["shard_rows"])), manifest, backbone.num_rows

    def write(self, plan: Plan, computed: tuple[list[pa.Table], dict[str, Any], int]) -> dict[str, Any]:
        shards, manifest, selected = computed
        manifest = publish_shards(self.work.output, shards, manifest)
        return {"rows": manifest["rows"], "shards": len(manifest["shards"]), "selected": selected,
                "output": str(self.work.output)}
