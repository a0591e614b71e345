"""Stage 4, filter: run one selection method over the candidate pool, record every decision."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from albat.pipeline.code_digest import code_digest
from albat.pipeline.methods.base import SelectionRequest, get_method
from albat.pipeline.options import FILTER, by_name
from albat.pipeline.shard_map import executor_settings
from albat.pipeline.stage import Plan, Stage
from albat.pipeline.threads import filter_threads, torch_threads
from albat.stores.chat import as_texts
from albat.stores.embedding_store import EmbeddingStore, store_side
from albat.stores.errors import AlbatError
from albat.stores.tables import read_array, read_table, write_table
from albat.stores.workdir import Workdir, fingerprint

SELECTION_FILE = "selection.parquet"


def method_options(options: dict[str, Any]) -> dict[str, Any]:
    """Everything in [filter] beside the filter stage's own keys is an option of the chosen method."""
    return {k: v for k, v in options.items() if k not in by_name(FILTER)}


def query_store(work: Workdir) -> EmbeddingStore:
    """The store from the side the query stage retrieved by: an image store queried by captions alone
    is read from its caption vectors (`PairSideView`), so every method compares captions with captions."""
    return store_side(work.store, ((work.stage_record("query") or {}).get("summary") or {}).get("side", "text"))


def build_request(config: dict[str, Any], work: Workdir, budget: int, seed: int) -> SelectionRequest:
    """What every method gets, read from the query stage's outputs (the filter stage and `albat diagnose`)."""
    query = work.query
    adaptation = read_table(query / "adaptation.parquet", "query")
    store = query_store(work)
    return SelectionRequest(
        candidates=read_table(query / "candidates.parquet", "query"),
        pairs=read_table(query / "candidate_pairs.parquet", "query"),
        blocked_ids=read_table(query / "blocked.parquet", "query").column("id").to_numpy(),
        store=store,
        adaptation_texts=as_texts(adaptation.column(config["query"]["text_column"]), store.chat_template),
        adaptation_vectors=read_array(query / "adaptation.npy"),
        budget=budget, seed=seed,
        adaptation_pair_vectors=(read_array(query / "adaptation.pair.npy")
                                 if (query / "adaptation.pair.npy").exists() else None),
        executor=executor_settings(config))


class FilterStage(Stage):
    name = "filter"

    def plan(self) -> Plan:
        options, seed, work = self.config["filter"], int(self.config["seed"]), self.work
        budget = int(options["budget"])
        query_record = work.stage_record("query")
        if not query_record:
            raise AlbatError(f"{work.query}: no completed query stage; run `albat query` first")
        fp = fingerprint({"options": options, "seed": seed, "query": query_record["fingerprint"],
                          "code": code_digest()})  # other selection code selects again
        return Plan(fp, (work.filter / SELECTION_FILE,), options, {"budget": budget, "seed": seed},
                    {"query": query_record["fingerprint"]})

    def compute(self, plan: Plan) -> tuple[Any, Any, float]:
        options, budget, seed, query = plan.recorded, plan.inputs["budget"], plan.inputs["seed"], self.work.query
        method = get_method(options["method"], **method_options(options))
        request = build_request(self.config, self.work, budget, seed)
        started = time.perf_counter()
        with torch_threads(filter_threads(options)):
            result = method.select(request)
        seconds = time.perf_counter() - started
        kept = int(np.sum(result.keep))
        if kept > budget:
            raise RuntimeError(f"method {method.name} kept {kept} rows over its budget {budget}")
        if np.isin(result.ids[result.keep], request.blocked_ids).any():
            raise RuntimeError(f"method {method.name} kept a blocked (leaking) id")
        return method, result, seconds

    def summarize(self, plan: Plan, computed: tuple[Any, Any, float]) -> tuple[Any, dict[str, Any]]:
        """The selection table and the summary recorded for it."""
        method, result, seconds = computed
        table = result.to_table(method.name)
        return table, {"method": method.name, "budget": plan.inputs["budget"], "kept": int(np.sum(result.keep)),
                       "considered": table.num_rows, "seed": plan.inputs["seed"], "seconds": round(seconds, 3),
                       **result.report}

    def write(self, plan: Plan, computed: tuple[Any, Any, float]) -> dict[str, Any]:
        table, summary = self.summarize(plan, computed)
        self.work.filter.mkdir(parents=True, exist_ok=True)
        write_table(table, self.work.filter / SELECTION_FILE)
        return summary
