"""albat.pipeline.stage on its own: a toy stage shows the protocol's order, the skip of a finished stage,
the rebuild when its output is missing or its inputs changed, `force`, and that a failure or a kill
between the steps never leaves a record claiming work that is not there."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from albat.stores.atomic import sha256_file
from albat.pipeline.stage import Plan, Stage, run_stage, stage_class
from albat.stores.errors import AlbatError
from albat.stores.workdir import Workdir, fingerprint


class Toy(Stage):
    """Writes WORK/toy/out.txt holding the config's `value`; logs every step it is asked to do."""

    name = "toy"

    def __init__(self, *args: Any, log: list[str], fail_in: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.log, self.fail_in = log, fail_in

    def _step(self, name: str) -> None:
        self.log.append(name)
        if self.fail_in == name:
            raise AlbatError(f"{name} failed")

    def plan(self) -> Plan:
        self._step("plan")
        options = self.config["toy"]
        return Plan(fingerprint(options), (self.work.root / "toy" / "out.txt",), options)

    def compute(self, plan: Plan) -> str:
        self._step("compute")
        return f"value {plan.recorded['value']}\n"

    def discard(self, plan: Plan) -> None:
        self._step("discard")

    def write(self, plan: Plan, computed: str) -> dict[str, Any]:
        self._step("write")
        plan.outputs[0].parent.mkdir(parents=True, exist_ok=True)
        plan.outputs[0].write_text(computed)
        return {"bytes": len(computed)}


def _run(work: Workdir, value: int, force: bool = False, fail_in: str | None = None) -> tuple[dict, list[str]]:
    log: list[str] = []
    result = run_stage(Toy({"toy": {"value": value}}, work, show_progress=False, force=force, log=log,
                           fail_in=fail_in))
    return result, log


def _record(work: Workdir) -> dict | None:
    return work.stage_record("toy")


def test_first_run_does_every_step_in_order_and_records(tmp_path: Path) -> None:
    work = Workdir(tmp_path)
    result, log = _run(work, 1)
    assert log == ["plan", "compute", "write"]
    assert result == {"skipped": False, "bytes": 8}
    record = _record(work)
    assert record == {"stage": "toy", "fingerprint": fingerprint({"value": 1}), "config": {"value": 1},
                      "summary": {"bytes": 8}, "outputs": {"toy/out.txt": sha256_file(work.root / "toy" / "out.txt")}}
    assert "checksum" in json.loads((work.stages / "toy.json").read_text())  # an edited record is not complete
    assert (tmp_path / "toy" / "out.txt").read_text() == "value 1\n"


def test_a_finished_stage_is_skipped_with_its_recorded_summary(tmp_path: Path) -> None:
    work = Workdir(tmp_path)
    _run(work, 1)
    before = (tmp_path / "_stages" / "toy.json").read_bytes()
    result, log = _run(work, 1)
    assert log == ["plan"]  # nothing computed, nothing written
    assert result == {"skipped": True, "bytes": 8}
    assert (tmp_path / "_stages" / "toy.json").read_bytes() == before


def test_a_missing_output_is_not_complete_and_is_rebuilt(tmp_path: Path) -> None:
    work = Workdir(tmp_path)
    _run(work, 1)
    (tmp_path / "toy" / "out.txt").unlink()
    result, log = _run(work, 1)
    assert log == ["plan", "compute", "write"] and result["skipped"] is False
    assert (tmp_path / "toy" / "out.txt").read_text() == "value 1\n"


def test_changed_options_rebuild_and_replace_the_record(tmp_path: Path) -> None:
    work = Workdir(tmp_path)
    _run(work, 1)
    result, log = _run(work, 2)
    assert log == ["plan", "compute", "write"] and result["skipped"] is False
    assert _record(work)["fingerprint"] == fingerprint({"value": 2})
    assert (tmp_path / "toy" / "out.txt").read_text() == "value 2\n"


def test_force_discards_and_rebuilds_a_finished_stage(tmp_path: Path) -> None:
    work = Workdir(tmp_path)
    _run(work, 1)
    result, log = _run(work, 1, force=True)
    assert log == ["plan", "discard", "compute", "write"] and result["skipped"] is False


@pytest.mark.parametrize("step", ["plan", "compute"])
def test_a_failure_before_writing_keeps_the_finished_record(tmp_path: Path, step: str) -> None:
    work = Workdir(tmp_path)
    _run(work, 1)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(AlbatError, match=f"{step} failed"):
        _run(work, 2, fail_in=step)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert _run(work, 1)[0]["skipped"] is True  # the old result is still complete


def test_a_failure_while_writing_leaves_no_record(tmp_path: Path) -> None:
    """From `forget` until `record`, an interruption means "not done": the next run rebuilds."""
    work = Workdir(tmp_path)
    _run(work, 1)
    with pytest.raises(AlbatError, match="write failed"):
        _run(work, 2, fail_in="write")
    assert _record(work) is None
    result, log = _run(work, 1)
    assert result["skipped"] is False and log == ["plan", "compute", "write"]


def test_a_record_with_another_fingerprint_is_not_complete(tmp_path: Path) -> None:
    work = Workdir(tmp_path)
    (tmp_path / "_stages").mkdir()
    (tmp_path / "_stages" / "toy.json").write_text(json.dumps({"fingerprint": "other", "summary": {}}))
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "out.txt").write_text("stale\n")
    result, _ = _run(work, 1)
    assert result["skipped"] is False and (tmp_path / "toy" / "out.txt").read_text() == "value 1\n"


def test_every_pipeline_stage_is_a_stage_class() -> None:
    from albat.pipeline.cli import STAGES

    for name in STAGES:
        cls = stage_class(name)
        assert issubclass(cls, Stage) and cls.name == name


# ----- the real stages ---------------------------------------------------------------------------------
def test_a_deleted_output_of_a_real_stage_makes_that_stage_rebuild(small_wiki, tiny_encoder, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """A deleted index file or query table is not complete: the stage that owns it rebuilds it,
    byte-identically, and the stages after it stay complete."""
    from conftest import albat, small_run_config

    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    assert albat("run", "--config", config, "--quiet") == 0
    work = tmp_path / "work"
    for path in (work / "index" / "knn.index", work / "tasks/default/query" / "blocked.parquet"):
        before = path.read_bytes()
        path.unlink()
        capsys.readouterr()
        assert albat("run", "--config", config, "--quiet") == 0
        lines = capsys.readouterr().out.splitlines()
        rebuilt = path.parent.name
        assert [line.split(":")[0] for line in lines if ": done" in line] == [rebuilt], lines
        assert path.read_bytes() == before
