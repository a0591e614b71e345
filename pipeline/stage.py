"""The stage runner: the one place that owns the protocol every stage follows.

    plan      read what the stage depends on, refuse bad input, fingerprint it   (writes nothing)
    skip      a record with that fingerprint whose output is present: done already
    compute   the stage's work                                                  (writes nothing)
    forget    drop the old completion record: from here until the new one, a kill means "not done"
    write     publish the outputs (atomically, see stores.atomic)
    record    write the completion record with the fingerprint, the summary, the outputs' SHA-256 and the
              fingerprints of the upstream records it was made from (so `verify` can tell a stale output)

A stage is a `Stage` subclass giving `plan`, `compute` and `write`. The completion record is
`_stages/NAME.json` by default (`stores.workdir`: the work directory's for index, the task's for
query, filter and emit), holding the options and seed it ran with; a stage that keeps its record elsewhere
(embed: `store.json`, which also lets it resume shard by shard) overrides `finished`, `forget`
and `record`. `force=True` rebuilds a stage even when it is complete: `discard` runs after `plan`
has accepted the inputs, so bad input never costs the old output.
"""
from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from albat.pipeline.progress import log, shown
from albat.stores.workdir import Workdir


@dataclass
class Plan:
    fingerprint: str  # digest of everything the output depends on
    outputs: tuple[Path, ...]  # the files whose presence (with a matching record) means "complete"
    recorded: Any  # the options written into the completion record
    inputs: dict[str, Any] = field(default_factory=dict)  # what `compute` and `write` need
    upstream: dict[str, str] = field(default_factory=dict)  # stage -> the fingerprint of its record this run read


class Stage(ABC):
    name: ClassVar[str]

    def __init__(self, config: dict[str, Any], work: Workdir, show_progress: bool = True, force: bool = False):
        self.config, self.work, self.show_progress, self.force = config, work, show_progress, force

    @abstractmethod
    def plan(self) -> Plan:
        """Check the inputs and fingerprint them; write nothing."""

    @abstractmethod
    def compute(self, plan: Plan) -> Any:
        """The stage's work; write nothing (a lazy iterator that `write` drains is fine)."""

    @abstractmethod
    def write(self, plan: Plan, computed: Any) -> dict[str, Any]:
        """Publish the outputs; return the summary recorded and printed."""

    def finished(self, plan: Plan) -> dict[str, Any] | None:
        """The summary of a finished run with this fingerprint whose outputs are all present and
        unchanged (the record holds their SHA-256), else None."""
        return self.work.finished_summary(self.name, plan.fingerprint, *plan.outputs)

    def discard(self, plan: Plan) -> None:
        """`force`: drop what an earlier run left before rebuilding (default: nothing, `write` replaces)."""

    def forget(self, plan: Plan) -> None:
        self.work.forget_stage(self.name)

    def record(self, plan: Plan, summary: dict[str, Any]) -> None:
        self.work.mark_stage_done(self.name, plan.fingerprint, plan.recorded, summary, plan.outputs, plan.upstream,
                                  seed=int(self.config["seed"]) if "seed" in self.config else None)


def run_stage(stage: Stage) -> dict[str, Any]:
    """plan -> skip if finished -> (force: discard) -> compute -> forget -> write -> record.
    Returns the summary with `skipped` saying whether the work was already done. Progress bars
    anywhere inside (pipeline.progress) follow the stage's `show_progress`."""
    with shown(stage.show_progress):
        plan = stage.plan()
        log.debug("%s: planned, fingerprint %s", stage.name, plan.fingerprint)
        if stage.force:
            stage.discard(plan)
        elif (done := stage.finished(plan)) is not None:
            log.debug("%s: complete with this fingerprint; skipped", stage.name)
            return {"skipped": True, **done}
        started = time.perf_counter()
        computed = stage.compute(plan)
        stage.forget(plan)
        summary = stage.write(plan, computed)
        stage.record(plan, summary)
        log.debug("%s: done in %.1f s", stage.name, time.perf_counter() - started)
        return {"skipped": False, **summary}


def stage_class(name: str) -> type[Stage]:
    """`pipeline.NAME.NameStage`, imported only when the stage runs (heavy libraries load there)."""
    module = importlib.import_module(f"albat.pipeline.{name}")
    return getattr(module, f"{name.capitalize()}Stage")
