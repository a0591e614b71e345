"""Stage 4, filter: run one selection method over the candidate pool, record every decision."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipeline.methods.base import SelectionRequest, get_method
from stores.embedding_store import EmbeddingStore
from stores.errors import AlbatError
from stores.tables import read_array, read_table, write_table
from stores.workdir import Workdir, fingerprint

SELECTION_FILE = "selection.parquet"


def method_options(options: dict[str, Any]) -> dict[str, Any]:
    """Everything in [filter] beside the shared keys is an option of the chosen method."""
    return {k: v for k, v in options.items() if k not in ("method", "budget")}


def build_request(config: dict[str, Any], work: Workdir, budget: int, options: dict[str, Any],
                  seed: int) -> SelectionRequest:
    """What every method gets, read from the query stage's outputs."""
    adaptation = read_table(work.query / "adaptation.parquet", "query")
    text_column = config["query"]["text_column"]
    return SelectionRequest(
        candidates=read_table(work.query / "candidates.parquet", "query"),
        pairs=read_table(work.query / "candidate_pairs.parquet", "query"),
        blocked_ids=read_table(work.query / "blocked.parquet", "query").column("id").to_numpy(),
        store=EmbeddingStore(work.store),
        adaptation_texts=adaptation.column(text_column).to_pylist(),
        adaptation_vectors=read_array(work.query / "adaptation.npy"),
        budget=budget, seed=seed, options=options,
        adaptation_pair_vectors=(read_array(work.query / "adaptation.pair.npy")
                                 if (work.query / "adaptation.pair.npy").exists() else None))


def run_filter(config: dict[str, Any], work: Workdir, show_progress: bool = True) -> dict[str, Any]:
    options, seed = config["filter"], int(config["seed"])
    budget = int(options["budget"])
    if budget < 0:
        raise AlbatError(f"filter.budget must be >= 0, got {budget}")
    query_record = work.stage_record("query")
    if not query_record:
        raise AlbatError(f"{work.query}: no completed query stage; run `albat query` first")
    fp = fingerprint({"options": options, "seed": seed, "query": query_record["fingerprint"]})
    if (done := work.finished_summary("filter", fp, work.filter / SELECTION_FILE)) is not None:
        return {"skipped": True, **done}
    method = get_method(options["method"], **method_options(options))
    request = build_request(config, work, budget, method_options(options), seed)
    started = time.perf_counter()
    result = method.select(request)
    seconds = time.perf_counter() - started
    kept = int(np.sum(result.keep))
    if kept > budget:
        raise RuntimeError(f"method {method.name} kept {kept} rows over its budget {budget}")
    if np.isin(result.ids[result.keep], request.blocked_ids).any():
        raise RuntimeError(f"method {method.name} kept a blocked (leaking) id")
    table = result.to_table(method.name)
    work.filter.mkdir(parents=True, exist_ok=True)
    work.forget_stage("filter")  # from here until the new record, a kill means "not done"
    write_table(table, work.filter / SELECTION_FILE)
    summary = {"method": method.name, "budget": budget, "kept": kept, "considered": table.num_rows,
               "seed": seed, "seconds": round(seconds, 3), **result.report}
    work.mark_stage_done("filter", fp, options, summary)
    return {"skipped": False, **summary}
