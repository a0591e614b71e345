"""The Python API: the pipeline's stages as calls that return results instead of printing.

    import albat

    p = albat.Pipeline("work", seed=0)                       # options: the same schema as the CLI
    p.embed(input=["corpus.parquet"], id_column="id", keep_columns=["topic"])
    p.index()
    p.query(adaptation=["adaptation.jsonl"], exclude=["eval.jsonl"], k=16)
    selection = p.select(method="knn", budget=64)            # a Selection: .table, .kept, .to_pandas()
    output = p.emit()                                        # an Output: .files, .manifest, .table()

    albat.run(config="run.toml")                             # every stage, as `albat run --config run.toml`

A `Pipeline` keeps every option it was given, so a later stage sees an earlier one's options (the
query's `text_column` when selecting), as one config file would; the module-level `albat.embed(...)`,
`albat.select(...)`, ... build a fresh `Pipeline` each call. Options are the config's keys
(pipeline.options, the README's option tables) checked the same way as the CLI's flags: an unknown
key or a bad value raises `albat.AlbatError` (one line naming the option and the fix) before
anything runs. The CLI (`albat.pipeline.cli`) is a thin layer over `run_stages`.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from albat.pipeline.options import RUNTIME, check_given

STAGES = ("embed", "index", "query", "filter", "mix", "emit")


@dataclass
class StageResult:
    """What one stage did: its summary (the one recorded in its completion record) and where its
    outputs are. `skipped`: it was already complete, nothing was recomputed."""
    stage: str
    skipped: bool
    summary: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.summary[key]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what `albat --json` prints for the stage."""
        return {"stage": self.stage, "state": "skipped" if self.skipped else "done", "summary": self.summary,
                "paths": {k: str(v) for k, v in self.paths.items()}}

    def line(self) -> str:
        """The one-line text summary the CLI prints."""
        details = ", ".join(f"{k}={v}" for k, v in self.summary.items())
        return f"{self.stage}: {'skipped (complete)' if self.skipped else 'done'}: {details}"


@dataclass
class Selection(StageResult):
    """The filter stage's result: every candidate the method considered, with its decision
    (`Pipeline.preview`: held in memory, `paths` empty)."""
    held: Any = None  # the selection table of a preview

    @property
    def table(self):
        """selection.parquet as a pyarrow Table: id, method, score, keep, reason, selection_rank,
        query_idx, weight, and the method's own score columns."""
        from albat.stores.tables import read_table

        return self.held if self.held is not None else read_table(self.paths["selection"], "filter")

    @property
    def kept(self):
        """The kept rows, in selection order."""
        table = self.table
        kept = table.filter(table.column("keep"))
        return kept.sort_by("selection_rank")

    def to_pandas(self):
        return self.table.to_pandas()


@dataclass
class Output(StageResult):
    """The emitted shard set: the files a trainer reads, and the manifest."""

    @property
    def manifest(self) -> dict[str, Any]:
        from albat.stores.shard_store import read_manifest

        return read_manifest(self.paths["output"])

    @property
    def files(self) -> list[Path]:
        from albat.stores.shard_store import shard_paths

        return shard_paths(self.paths["output"])

    def table(self):
        """Every shard's rows in one pyarrow Table."""
        import pyarrow.parquet as pq
        import pyarrow as pa

        return pa.concat_tables([pq.read_table(f) for f in self.files])

    def to_pandas(self):
        return self.table().to_pandas()

    def dataset(self):
        """The shards as a Hugging Face `datasets.Dataset` (train split); its progress bars follow
        albat's (off when stderr is not a terminal)."""
        import datasets
        from datasets.utils import logging as ds_logging

        from albat.pipeline.progress import bars_on

        quiet = not bars_on() and ds_logging.is_progress_bar_enabled()
        if quiet:
            ds_logging.disable_progress_bar()
        try:
            return datasets.load_dataset("parquet", data_files=[str(f) for f in self.files], split="train")
        finally:
            if quiet:
                ds_logging.enable_progress_bar()


RESULT_TYPES: dict[str, type[StageResult]] = {"filter": Selection, "emit": Output}


def stage_paths(stage: str, work: Any) -> dict[str, Path]:
    """Where a stage's outputs are, read through the work directory (stores.workdir)."""
    from albat.pipeline.filter import SELECTION_FILE
    from albat.pipeline.query import CANDIDATES_FILE
    from albat.stores.shard_store import MANIFEST

    return {"embed": {"store": work.store},
            "index": {"index": work.index},
            "query": {"query": work.query, "candidates": work.query / CANDIDATES_FILE},
            "filter": {"selection": work.filter / SELECTION_FILE},
            "mix": {"weights": work.mix / "weights.parquet", "groups": work.mix / "groups.parquet"},
            "emit": {"output": work.output, "manifest": work.output / MANIFEST}}[stage]


def workdir(config: Mapping[str, Any]):
    """The work directory a config names (stores.workdir.Workdir); for a URL (`s3://...`), its local
    mirror, with `remote` the stores.remote.Mirror that pulls and pushes it."""
    from albat.stores.remote import Mirror, is_work_url
    from albat.stores.workdir import Workdir

    if is_work_url(config["work"]):
        mirror = Mirror(config["work"])
        work = Workdir(mirror.local, output=config["emit"]["output"], task=config["task"])
        work.remote = mirror
        return work
    return Workdir(config["work"], output=config["emit"]["output"], task=config["task"])


def run_stages(stages: Sequence[str], config: dict[str, Any], show_progress: bool = True, force: bool = False,
               on_result: Callable[[StageResult], Any] = lambda _: None) -> dict[str, StageResult]:
    """Run `stages` in order under the work directory's writer lock (a checked config, from
    `pipeline.config.load_config`); `on_result` sees each stage's result as soon as it is done."""
    from albat.pipeline.stage import run_stage, stage_class

    work = workdir(config)
    if work.remote is not None:  # a URL: pull what the remote holds into the mirror, run there, push each stage
        work.remote.pull()
        work = workdir(config)  # its task and output placed from the pulled files
    complete = _lock(work, config, stages, show_progress, force)
    results: dict[str, StageResult] = {}
    try:
        for stage in stages:
            summary = complete.get(stage) or run_stage(stage_class(stage)(config, work, show_progress=show_progress,
                                                                          force=force))
            if work.remote is not None:
                work.remote.push()
            skipped = bool(summary.pop("skipped", False))
            result = RESULT_TYPES.get(stage, StageResult)(stage, skipped, summary, stage_paths(stage, work))
            results[stage] = result
            on_result(result)
    finally:
        work.unlock()
    return results


STORE_STAGES = ("embed", "index")  # the stages that write the store and index (other work directories may link them)


def _lock(work: Any, config: Mapping[str, Any], stages: Sequence[str], show_progress: bool,
          force: bool) -> dict[str, dict[str, Any]]:
    """Take the locks `stages` need; return the summaries of those of embed and index found complete.

    embed and index write the store and index, which other work directories may link and read, so
    they take those folders' lock exclusively (and wait for every reader). When both are complete with
    this config (no `force`), nothing will be written there: that is checked under the shared lock,
    and the run keeps it (the work directory's own lock stays exclusive unless embed and index are all
    it runs). So `albat embed` or `index` on a finished store passes beside the query or filter of a
    work directory linked to it, instead of being refused or refusing it. Anything else, or a check
    that finds work to do, takes the exclusive lock as before."""
    from albat.pipeline.stage import stage_class
    from albat.stores.errors import AlbatError

    writers = [s for s in stages if s in STORE_STAGES]
    if writers and not force and work.remote is None:
        try:
            work.lock(shared=len(writers) == len(stages), read_links=True)
        except AlbatError:
            pass  # busy: the exclusive lock below says by whom
        else:
            complete = {}
            try:
                for name in writers:
                    stage = stage_class(name)(config, work, show_progress=show_progress)
                    done = stage.finished(stage.plan())
                    if done is None:
                        break
                    complete[name] = {"skipped": True, **done}
            except BaseException:
                work.unlock()
                raise
            if len(complete) == len(writers):
                return complete
            work.unlock()
    work.lock(read_links=not writers)  # a linked store is only read by the other stages
    return {}


def _plain(value: Any) -> Any:
    """Path objects (and tuples of them) as the strings the option schema takes."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _where(call: str) -> Callable[[str], str]:
    return lambda label: f"albat {call}({label.split('.')[-1]}=...)"


class Pipeline:
    """One work directory and the options of every stage run on it.

    `work`: the work directory (default: the config's, else `work`); `config`: a TOML config file
    (as `--config`); `seed`: seed of every random choice; `quiet`: no progress bars; `force`: rebuild
    even complete stages; `embed={...}`, `query={...}`, ...: options per config section, as a config
    file's tables hold them. Each stage call takes that stage's options as keywords too."""

    def __init__(self, work: str | os.PathLike | None = None, config: str | os.PathLike | None = None, *,
                 seed: int | None = None, quiet: bool = False, force: bool = False,
                 **sections: Mapping[str, Any]):
        unknown = sorted(set(sections) - set(STAGES))
        if unknown:
            from albat.stores.errors import AlbatError

            raise AlbatError(f"albat Pipeline({unknown[0]}=...): unknown section (known: {', '.join(STAGES)}); "
                             "give stage options as embed={...}, query={...}, filter={...}, ...")
        runtime = check_given(RUNTIME, {"quiet": quiet, "force": force}, _where("Pipeline"))
        self.quiet, self.force = runtime["quiet"], runtime["force"]
        self.config_file = os.fspath(config) if config is not None else None
        self._given: dict[str, Any] = {s: {} for s in STAGES}
        if work is not None:
            self._given["work"] = os.fspath(work)
        if seed is not None:
            self._given["seed"] = seed
        for section, options in sections.items():
            self._given[section].update(_plain(dict(options)))
        self.config = self._load("Pipeline")

    def _load(self, call: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
        from albat.pipeline.config import load_config

        return load_config(self.config_file, given if given is not None else self._given, where=_where(call))

    def configure(self, stage: str, **options: Any) -> dict[str, Any]:
        """Add options to a stage's section (checked now); returns the effective config."""
        given = copy.deepcopy(self._given)
        given[stage].update(_plain(options))
        self.config = self._load(f"{'select' if stage == 'filter' else stage}", given)
        self._given = given
        return self.config

    @property
    def work(self):
        """The work directory (stores.workdir.Workdir)."""
        return workdir(self.config)

    def _run(self, stages: Iterable[str], force: bool | None) -> dict[str, StageResult]:
        return run_stages(list(stages), self.config, show_progress=not self.quiet,
                          force=self.force if force is None else force)

    def _stage(self, stage: str, force: bool | None, options: dict[str, Any], **named: Any) -> Any:
        """Remember the stage's options (those of `named` that are not None too), then run it."""
        self.configure(stage, **options, **{k: v for k, v in named.items() if v is not None})
        return self._run([stage], force)[stage]

    def embed(self, input: str | os.PathLike | Sequence[str | os.PathLike] | None = None, *,
              force: bool | None = None, **options: Any) -> StageResult:
        """Embed the corpus (`input`: files, globs, directories) into the store; summary: rows, shards."""
        return self._stage("embed", force, options, input=input)

    def index(self, *, force: bool | None = None, **options: Any) -> StageResult:
        """Build the FAISS index; summary: index key, recall."""
        return self._stage("index", force, options)

    def query(self, adaptation: str | os.PathLike | Sequence[str | os.PathLike] | None = None, *,
              force: bool | None = None, **options: Any) -> StageResult:
        """Retrieve candidates for the adaptation examples; summary: candidates, blocked."""
        return self._stage("query", force, options, adaptation=adaptation)

    def select(self, method: str | None = None, budget: int | None = None, *, force: bool | None = None,
               **options: Any) -> Selection:
        """The filter stage: select up to `budget` candidates with `method` (and its options)."""
        return self._stage("filter", force, options, method=method, budget=budget)

    filter = select

    def preview(self, method: str | None = None, budget: int | None = None, **options: Any) -> Selection:
        """What `select` would choose, computed in memory: nothing written, the work directory's own
        selection untouched and the options not remembered (to compare methods on one query)."""
        from albat.pipeline.filter import FilterStage
        from albat.pipeline.progress import shown

        given = copy.deepcopy(self._given)
        given["filter"].update(_plain({**options, **{k: v for k, v in (("method", method), ("budget", budget))
                                                      if v is not None}}))
        config = self._load("preview", given)
        stage = FilterStage(config, workdir(config), show_progress=not self.quiet)
        with shown(stage.show_progress):
            plan = stage.plan()
            table, summary = stage.summarize(plan, stage.compute(plan))
        return Selection("filter", False, summary, {}, held=table)

    def mix(self, *, force: bool | None = None, **options: Any) -> StageResult:
        """Group weights of the selection by Mixtures of Data Experts (as `albat mix`; the [mix] keys)."""
        return self._stage("mix", force, options)

    def emit(self, *, force: bool | None = None, **options: Any) -> Output:
        """Write the selection (and the adaptation rows) as Parquet shards with a manifest."""
        return self._stage("emit", force, options)

    def run(self, *, force: bool | None = None) -> dict[str, StageResult]:
        """Every stage in order, each skipped when complete (as `albat run`; mix only when [mix] enabled)."""
        return self._run(tuple(s for s in STAGES if s != "mix" or self.config["mix"]["enabled"]), force)

    def sql(self, query: str, **tables: Any):
        """A read-only DuckDB query over the work directory's views, as a pyarrow Table; `tables`:
        more views by name (a pyarrow Table or DataFrame, e.g. a preview's `.table`)."""
        return sql(self.config["work"], query, **tables)

    def report(self, out: str | os.PathLike | None = None) -> Path:
        """Write the HTML report of this run (as `albat report`); returns its path."""
        return report(self.config["work"], out=out)


PIPELINE_KEYWORDS = ("config", "seed", "quiet", "force")


def _stage_call(stage: str, work: str | os.PathLike | None, options: dict[str, Any]) -> Any:
    """One stage on a fresh Pipeline: `config`, `seed`, `quiet` and `force` go to the Pipeline
    (see there), every other keyword is an option of the stage."""
    settings = {k: options.pop(k) for k in PIPELINE_KEYWORDS if k in options}
    pipeline = Pipeline(work, settings.pop("config", None), **settings)
    return getattr(pipeline, stage)(**options)


def embed(work: str | os.PathLike | None = None, input: Any = None, **options: Any) -> StageResult:
    """`albat embed`: embed `input` into WORK/store; other keywords: the [embed] keys, and config,
    seed, quiet, force as for `Pipeline`."""
    return _stage_call("embed", work, {"input": input, **options})


def index(work: str | os.PathLike | None = None, **options: Any) -> StageResult:
    """`albat index`; keywords: the [index] keys (and config, seed, quiet, force)."""
    return _stage_call("index", work, options)


def query(work: str | os.PathLike | None = None, adaptation: Any = None, **options: Any) -> StageResult:
    """`albat query`; keywords: the [query] keys: exclude, k, dedup_threshold, ... (and config, seed, quiet, force)."""
    return _stage_call("query", work, {"adaptation": adaptation, **options})


def select(work: str | os.PathLike | None = None, method: str | None = None, budget: int | None = None,
           **options: Any) -> Selection:
    """`albat filter`; keywords: the chosen method's keys (and config, seed, quiet, force)."""
    return _stage_call("select", work, {"method": method, "budget": budget, **options})


def mix(work: str | os.PathLike | None = None, **options: Any) -> StageResult:
    """`albat mix`; keywords: the [mix] keys: group_by, groups, surrogate, ... (and config, seed, quiet, force)."""
    return _stage_call("mix", work, options)


def emit(work: str | os.PathLike | None = None, **options: Any) -> Output:
    """`albat emit`; keywords: the [emit] keys (and config, seed, quiet, force)."""
    return _stage_call("emit", work, options)


def run(config: str | os.PathLike | None = None, work: str | os.PathLike | None = None, *,
        seed: int | None = None, quiet: bool = False, force: bool = False,
        **sections: Mapping[str, Any]) -> dict[str, StageResult]:
    """`albat run`: every stage; `sections`: embed={...}, query={...}, ... over the config file's."""
    return Pipeline(work, config, seed=seed, quiet=quiet, force=force, **sections).run()


def sql(work: str | os.PathLike, query: str, **tables: Any):
    """`albat sql`: one read-only query over the work directory's views (views `corpus`, `candidates`,
    `candidate_pairs`, `blocked`, `adaptation`, `selection`, `mix`, `mix_groups`, `shards`, the macro `reason_kind`), as a
    pyarrow Table; `tables`: more views, name -> a pyarrow Table or DataFrame."""
    from albat.pipeline.sql import query_table
    from albat.stores.remote import local_work

    return query_table(local_work(os.fspath(work)), query, tables)


def report(work: str | os.PathLike, out: str | os.PathLike | None = None, *, task: str = "default",
           seed: int = 0) -> Path:
    """`albat report`: the HTML page of one run; returns its path."""
    from albat.pipeline.report import write_report
    from albat.stores.remote import local_work

    return write_report(local_work(os.fspath(work)), out=os.fspath(out) if out is not None else None, seed=seed, task=task)
