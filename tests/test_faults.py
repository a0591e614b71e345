"""Fault injection: SIGKILL every stage at seeded crash points, rerun, and get what an
uninterrupted run gives, byte for byte, with no id lost or duplicated and nothing half-written
visible in between.

For each stage, an uninterrupted run with `ALBAT_FAULT_TRACE` lists the crash points it passes
(every publishing rename, before and after, each piece of every shard/table/index write, each
directory swap; see stores/faults.py). The suite then kills the stage at `ALBAT_FAULT_KILLS`
(default 20) positions drawn from that list with `ALBAT_FAULT_SEED` (default 0), plus fixed ones:
part-way through a shard write, and just before and just after the final rename (and directory
swap). After each kill, `albat verify` must find no drift (a reader never sees a partial file or a
manifest naming a missing one); the rerun must exit 0 and leave a work directory identical to the
uninterrupted run's: every file byte for byte, JSON records too once their timings are removed.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import SmallWiki, small_run_config
from fault_harness import Runner

from albat.pipeline.cli import STAGES
from albat.stores.verify import verify_workdir
from albat.stores.workdir import Workdir

KILLS = int(os.environ.get("ALBAT_FAULT_KILLS", "20"))
SEED = int(os.environ.get("ALBAT_FAULT_SEED", "0"))
# timing fields, and what a stage record derives from files that hold timings: its own checksum and
# its outputs' SHA-256 (index_infos.json and manifest.json hold timings; every file itself is compared)
TIMINGS = {"build_seconds", "train_seconds", "queries_per_s", "peak_rss_bytes", "seconds", "checksum", "outputs"}


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def snapshot(work: Path) -> dict[str, bytes | object]:
    """Every file under `work`: its bytes, or for JSON its content without timings."""
    out: dict[str, bytes | object] = {}
    for path in sorted(p for p in work.rglob("*") if p.is_file()):
        rel = str(path.relative_to(work))
        out[rel] = _without_timings(json.loads(path.read_text())) if path.suffix == ".json" else path.read_bytes()
    return out


class Suite:
    """Per stage: the work directory before it, its uninterrupted result and its crash-point trace."""

    def __init__(self, root: Path, wiki: SmallWiki, encoder: str):
        self.root = root
        self.config = small_run_config(root, wiki, encoder)
        self.work = root / "work"
        self.runner = Runner(root)
        self.before: dict[str, Path] = {}
        self.after: dict[str, dict] = {}
        self.trace: dict[str, list[str]] = {}
        for stage in STAGES:
            self.before[stage] = root / f"before-{stage}"
            shutil.copytree(self.work, self.before[stage]) if self.work.exists() else self.before[stage].mkdir()
            trace = root / f"trace-{stage}.txt"
            result = self.runner.run(stage, "--config", self.config, "--quiet", trace=trace)
            assert result.exitcode == 0, result.output
            self.after[stage] = snapshot(self.work)
            self.trace[stage] = trace.read_text().splitlines()

    def reset(self, stage: str) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.copytree(self.before[stage], self.work)


def kill_points(trace: list[str], kills: int, seed: int) -> dict[int, str]:
    """Hit number (1-based) -> point name: `kills` seeded draws, plus a kill part-way through a shard
    write and around the final rename and directory swap."""
    rng = random.Random(seed)
    chosen = set(rng.sample(range(1, len(trace) + 1), min(kills, len(trace))))
    mid_write = [n for n in range(2, len(trace) + 1) if trace[n - 1].startswith("write:") and trace[n - 2] == trace[n - 1]]
    chosen.update(mid_write[:1])
    for prefix in ("rename:", "renamed:"):
        chosen.update([n for n in range(1, len(trace) + 1) if trace[n - 1].startswith(prefix)][-1:])
    chosen.update(n for n in range(1, len(trace) + 1) if trace[n - 1].endswith(("before_swap", "swapped")))
    return {n: trace[n - 1] for n in sorted(chosen)}


@pytest.fixture(scope="module")
def suite(small_wiki: SmallWiki, tiny_encoder: str, tmp_path_factory: pytest.TempPathFactory) -> Suite:
    return Suite(tmp_path_factory.mktemp("faults"), small_wiki, tiny_encoder)


def _ids_exact(work: Path, wiki: SmallWiki) -> None:
    """No id lost or duplicated: the store holds each corpus id once, the output each selected id once."""
    meta = sorted(work.glob("store/shards/part-*.meta.parquet"))
    ids = np.concatenate([pq.read_table(p, columns=["albat_id"]).column(0).to_numpy() for p in meta])
    assert len(ids) == len(set(ids.tolist())) == wiki.rows
    assert set(ids.tolist()) == set(pq.read_table(wiki.corpus, columns=["id"]).column(0).to_pylist())
    manifest_path = work / "tasks/default/output" / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        shards = [pq.read_table(work / "tasks/default/output" / s["path"]) for s in manifest["shards"]]
        selected = [i for t in shards for i, a in zip(t.column("albat_id").to_pylist(),
                                                      t.column("albat_is_adaptation").to_pylist()) if not a]
        assert len(selected) == len(set(selected)) == manifest["counts"]["selected"]


def test_every_stage_has_enough_crash_points(suite: Suite) -> None:
    for index, stage in enumerate(STAGES):
        points = kill_points(suite.trace[stage], KILLS, SEED * 100 + index)
        print(f"{stage}: {len(suite.trace[stage])} crash points passed, killed at {len(points)}")  # pytest -s shows it
        assert len(points) >= min(KILLS, 20), (stage, len(suite.trace[stage]))
        assert any(name.startswith("write:") for name in points.values()), stage


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_anywhere_then_rerun_gives_the_uninterrupted_result(stage: str, suite: Suite, small_wiki: SmallWiki) -> None:
    stage_index = STAGES.index(stage)
    points = kill_points(suite.trace[stage], KILLS, SEED * 100 + stage_index)
    reference = suite.after[stage]
    for n, name in points.items():
        suite.reset(stage)
        killed = suite.runner.run(stage, "--config", suite.config, "--quiet", kill_at=f"*:{n}")
        assert killed.exitcode == -signal.SIGKILL, (n, name, killed.output)
        # what a reader sees in between: nothing half-written, no manifest naming a missing file
        drift = [f.line() for f in verify_workdir(Workdir(suite.work)) if f.level == "drift"]
        assert not drift, (n, name, drift)
        resumed = suite.runner.run(stage, "--config", suite.config, "--quiet")
        assert resumed.exitcode == 0, (n, name, resumed.output)
        after = snapshot(suite.work)
        assert sorted(after) == sorted(reference), (n, name)  # no leftover temporary, no missing file
        changed = [path for path in reference if after[path] != reference[path]]
        assert not changed, (n, name, changed)
        _ids_exact(suite.work, small_wiki)
        findings = verify_workdir(Workdir(suite.work))
        assert [f.level for f in findings if f.level != "info"] == ["ok"] * (stage_index + 1), (n, name, findings)
