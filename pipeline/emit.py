"""Stage 5, emit: publish the selected rows (and optionally the adaptation set) as Parquet shards
with weights, provenance and a manifest that any trainer or DuckDB reads as-is.

Weights: a trainer minimising  sum_i albat_weight_i * loss_i / n_A  over the mixture minimises
the BAT loss  mean_A loss + lambda * mean_S w_b * loss,  because adaptation rows weigh 1 and a
selected backbone row b weighs  lambda * n_A / m * w_b  (m selected rows, w_b the method's weight).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from albat import __version__
from albat.pipeline.adaptation_rows import adaptation_columns
from albat.pipeline.filter import SELECTION_FILE
from albat.pipeline.manifest import effective_config, encoder_source, file_list, portable, relative_path, stage_seeds
from albat.pipeline.mix import fresh_mix, mix_multipliers
from albat.pipeline.progress import progress_bar
from albat.pipeline.stage import Plan, Stage
from albat.stores.atomic import sha256_file
from albat.stores.embedding_store import ID, ROW, SOURCE, EmbeddingStore
from albat.stores.errors import AlbatError
from albat.stores.index_store import read_infos
from albat.stores.shard_store import MANIFEST, publish_shards, set_damage
from albat.stores.tables import read_table
from albat.stores.views import fetch_table, sql_literal
from albat.stores.workdir import fingerprint

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
             adaptation_text_column: str, lam: float, n_adaptation: int,
             multipliers: np.ndarray | None = None) -> pa.Table:
    """One table: user columns first, then albat provenance; adaptation rows (if given) flagged.
    `n_adaptation` is n_A of the weight formula, whether or not the adaptation rows are written;
    `multipliers` (the mix stage's, per backbone row) rescale the backbone weights."""
    n_adapt = adaptation.num_rows if adaptation is not None else 0
    user_cols = [c for c in backbone.column_names if c not in (ID, SOURCE, ROW, "albat_method", "albat_score",
                                                                "w_b", "albat_query")]
    query = backbone.column("albat_query").to_numpy(zero_copy_only=False)
    weights = backbone_weights(backbone.column("w_b").to_numpy(zero_copy_only=False), n_adaptation, lam)
    if multipliers is not None:
        weights = weights * multipliers
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
    user = adaptation_columns(adaptation, table.schema, store_info["text_column"], adaptation_text_column,
                              store_info.get("chat_template") or "lines")
    query = adaptation.column("query_idx").cast(pa.int64()).to_numpy()
    rows = {**user,
            "albat_id": pa.array(-1 - query, pa.int64()),  # never null: a null would turn a batch of ids to float
            "albat_method": pa.array(["adaptation"] * n_adapt, pa.string()),
            "albat_score": pa.nulls(n_adapt, pa.float64()),
            "albat_weight": pa.array(np.ones(n_adapt), pa.float64()),
            "albat_query": pa.array(query, pa.int32()),
            "albat_is_adaptation": pa.array(np.ones(n_adapt, bool)),
            "albat_source": adaptation.column(SOURCE).cast(pa.string()),
            "albat_row": adaptation.column(ROW).cast(pa.int64())}
    added = [c for c in user if c not in table.column_names]  # the adaptation set's own columns, after the backbone's
    for offset, name in enumerate(added):
        table = table.add_column(len(user_cols) + offset, pa.field(name, user[name].type),
                                 pa.nulls(table.num_rows, user[name].type))
    return pa.concat_tables([pa.table({c: rows.get(c, pa.nulls(n_adapt, table.schema.field(c).type))
                                       for c in table.column_names}, schema=table.schema), table])


def split_shards(table: pa.Table, shard_rows: int) -> list[pa.Table]:
    """Consecutive slices of `shard_rows` rows (>= 1, pipeline.options); one empty shard for no rows."""
    return [table.slice(start, shard_rows) for start in range(0, max(table.num_rows, 1), shard_rows)]


def imagefolder_dir(work: Any) -> Any:
    """Where `--emit-format imagefolder` exports: OUTPUT-imagefolder/ beside the shard set."""
    return work.output.with_name(work.output.name + "-imagefolder")


def _counted(tables: list[pa.Table], on_rows: Callable[[int], object]) -> Iterator[pa.Table]:
    """The tables, reporting each one's rows once the consumer asks for the next (it wrote this one)."""
    for table in tables:
        yield table
        on_rows(table.num_rows)


def relative_sources(table: pa.Table, root: Path | str) -> pa.Table:
    """`albat_source` as a path relative to the work directory (no absolute local path in the set)."""
    if "albat_source" not in table.column_names:
        return table
    column = table.column("albat_source").to_pylist()
    seen: dict[str, str] = {}
    rewritten = [None if v is None else seen.setdefault(v, relative_path(v, root)) for v in column]
    return table.set_column(table.column_names.index("albat_source"), "albat_source", pa.array(rewritten, pa.string()))


class EmitStage(Stage):
    name = "emit"

    def plan(self) -> Plan:
        options, work = self.config["emit"], self.work
        filter_record = work.stage_record("filter")
        if not filter_record or not (work.filter / SELECTION_FILE).exists():
            raise AlbatError(f"{work.filter}: no completed filter stage; run `albat filter` first")
        mix_record = fresh_mix(work, filter_record["fingerprint"])
        if mix_record is None and self.config.get("mix", {}).get("enabled"):
            raise AlbatError(f"{work.mix}: no mix of the current selection; run `albat mix` first (or drop --mix)")
        mixed = mix_record["fingerprint"] if mix_record else None
        fp = fingerprint({"options": options, "filter": filter_record["fingerprint"], **({"mix": mixed} if mixed else {})})
        exported = ((imagefolder_dir(work) / "metadata.jsonl",) if options.get("emit_format") == "imagefolder" else ())
        return Plan(fp, (work.output / MANIFEST, *exported), options,
                    {"filter_record": filter_record, "mix_record": mix_record},
                    {"filter": filter_record["fingerprint"], **({"mix": mixed} if mixed else {})})

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
        selection = work.filter / SELECTION_FILE
        backbone = selected_rows(store, str(selection))
        records = {"embed": {"config": info.get("config"), "seed": info.get("seed")},
                   **{s: work.stage_record(s) for s in ("index", "query", "filter")}}
        query_summary = records["query"]["summary"]
        adaptation = read_table(work.query / "adaptation.parquet", "query") if options["include_adaptation"] else None
        # captions alone on an image store (text→text) have no images to train on: only the selection is emitted
        captions_only = info.get("modality") == "image" and adaptation is not None \
            and info["image_column"] not in adaptation.column_names
        adaptation = None if captions_only else adaptation
        lam = float(options["backbone_weight"])
        query_config = records["query"]["config"]
        mix_record = plan.inputs["mix_record"]
        multipliers = (mix_multipliers(work, backbone.column(ID).to_numpy(),
                                       backbone.column("w_b").to_numpy(zero_copy_only=False).astype(np.float64))
                       if mix_record else None)
        table = assemble(backbone, adaptation, info, query_config["text_column"], lam,
                         int(query_summary["adaptation"]), multipliers)
        table = relative_sources(table, work.root)
        if info.get("modality") == "image":  # `datasets` reads the image column as PIL images
            from albat.stores.image_export import with_image_feature

            table = with_image_feature(table, info["image_column"])
        index_infos = read_infos(work.index)
        seed = int(filter_record.get("seed", filter_record["summary"].get("seed", config["seed"])))
        manifest = {
            "format_version": 2, "created_by": f"albat {__version__}", "task": work.task,
            "method": filter_record["summary"]["method"], "license": options["license"],
            "seed": seed, "seeds": stage_seeds(records),
            "encoder": encoder_source(info["encoder"], work.root),
            "index": {k: index_infos.get(k) for k in ("index_key", "nprobe", "recall_at_k", "recall_k")},
            "counts": {"corpus_rows": info["rows"], "candidates": query_summary["candidates"],
                       "blocked": query_summary["blocked"], "selected": backbone.num_rows,
                       "adaptation": adaptation.num_rows if adaptation is not None else 0,
                       **({"adaptation_left_out": "captions without images (text→text query)"}
                          if captions_only else {})},
            "weights": {"lambda": lam, "formula": "adaptation rows 1; backbone rows lambda * n_A / m * w_b"
                        + (" * mix multiplier (w_g * sum w_b / the group's sum of w_b)" if mix_record else ""),
                        **({"mix": mix_record["summary"]} if mix_record else {})},
            "columns": {"text": info["text_column"], "id": info["id_column"], "keep": info["keep_columns"],
                        "provenance": PROVENANCE},
            "inputs": {"corpus": file_list(info.get("inputs", []), work.root, digest=False),
                       "adaptation": file_list(_files(query_config["adaptation"]), work.root, digest=True),
                       "exclude": file_list(_files(query_config["exclude"]), work.root, digest=True)},
            "stages": {s: (work.stage_record(s) or {}).get("fingerprint")
                       for s in ("index", "query", "filter", *(("mix",) if mix_record else ()))},
            "sources": {"selection_sha256": sha256_file(selection)},  # `albat verify`: stale once it changes
            "selection": portable(filter_record["summary"], work.root),  # the method's report: thresholds, fit
            "config": effective_config(records, options, work.task, work.root),
        }
        return split_shards(table, int(options["shard_rows"])), manifest, backbone.num_rows

    def write(self, plan: Plan, computed: tuple[list[pa.Table], dict[str, Any], int]) -> dict[str, Any]:
        shards, manifest, selected = computed
        export = {}
        if plan.recorded.get("emit_format") == "imagefolder":
            export = self._export_imagefolder(shards)
        with progress_bar(total=sum(s.num_rows for s in shards), desc="emit") as bar:
            manifest = publish_shards(self.work.output, _counted(shards, bar.update), {**manifest, **export})
        return {"rows": manifest["rows"], "shards": len(manifest["shards"]), "selected": selected,
                "output": str(self.work.output), **export}

    def _export_imagefolder(self, shards: list[pa.Table]) -> dict[str, Any]:
        """`--emit-format imagefolder`: OUTPUT-imagefolder/ beside the shard set (stores.image_export)."""
        from albat.stores.image_export import export_imagefolder

        info = EmbeddingStore(self.work.store).info
        if info.get("modality") != "image":
            raise AlbatError(f"{self.work.store}: --emit-format imagefolder needs an image store "
                             "(albat embed --modality image)")
        return export_imagefolder(shards, imagefolder_dir(self.work), info["image_column"], info["text_column"])


def _files(paths: list[str]) -> list[str]:
    """The files the adaptation or exclusion paths name: a folder or glob by each file in it; a
    path gone since (or not a local one) by its name."""
    import glob

    out = []
    for raw in paths:
        matches = sorted(glob.glob(raw)) if any(c in raw for c in "*?[") else [raw]
        for path in matches:
            out += sorted(str(p) for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [path]
    return out
