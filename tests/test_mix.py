"""`albat mix` end to end on the small corpus: group weights found by MDE, emit's weight arithmetic
(each group gets its share, the total stays lambda * n_A), the manifest and views, determinism, a
stale mix ignored, and the errors a user meets."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SmallWiki, albat, finished_small_run


@pytest.fixture(scope="module")
def finished(small_wiki: SmallWiki, tiny_encoder: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return finished_small_run(tmp_path_factory.mktemp("mix"), small_wiki, tiny_encoder)


def _copy(finished: tuple[Path, Path], tmp_path: Path) -> Path:
    shutil.copytree(finished[0], tmp_path / "w")
    return tmp_path / "w"


def _shards(work: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted((work / "tasks/default/output/data").glob("part-*.parquet"))])


def small_wiki_corpus(work: Path) -> list[str]:
    """The store's metadata shards (they hold albat_id and the kept columns)."""
    return sorted(str(p) for p in (work / "store/shards").glob("part-*.meta.parquet"))


def _mix(finished, work: Path, *flags: object) -> int:
    return albat("mix", "--config", finished[1], "--work", work, "--mix-steps", 20, *flags, "--quiet")


def test_mix_then_emit_gives_each_group_its_weight_and_keeps_the_total(finished, tmp_path) -> None:
    work = _copy(finished, tmp_path)
    before = _shards(work)
    assert _mix(finished, work, "--mix-groups", 3) == 0
    weights = pq.read_table(work / "tasks/default/mix/weights.parquet").to_pydict()
    groups = pq.read_table(work / "tasks/default/mix/groups.parquet").to_pydict()
    assert sum(weights["weight"]) == pytest.approx(1.0) and min(weights["weight"]) >= 0
    assert sum(weights["rows"]) == len(groups["id"]) == 20  # the kept rows of the finished run
    assert albat("emit", "--config", finished[1], "--work", work, "--quiet") == 0
    after = _shards(work)
    backbone = after.filter(pa.compute.invert(after.column("albat_is_adaptation")))
    n_adaptation = int(pa.compute.sum(after.column("albat_is_adaptation")).as_py())
    total = pa.compute.sum(backbone.column("albat_weight")).as_py()
    assert total == pytest.approx(1.0 * n_adaptation)  # lambda * n_A, as without the mix
    group_of = dict(zip(groups["id"], groups["group"]))
    ids = backbone.column("albat_id").to_pylist()
    per_group = np.bincount([group_of[i] for i in ids], weights=backbone.column("albat_weight").to_numpy(),
                            minlength=len(weights["weight"]))
    assert per_group / total == pytest.approx(weights["weight"])
    assert ids == before.filter(pa.compute.invert(before.column("albat_is_adaptation"))).column("albat_id").to_pylist()
    manifest = json.loads((work / "tasks/default/output/manifest.json").read_text())
    assert manifest["weights"]["mix"]["weights"] and "mix" in manifest["stages"]
    assert albat("verify", work, "--quiet") == 0


def test_mix_is_deterministic_and_a_rerun_skips(finished, tmp_path, capsys) -> None:
    a, b = _copy(finished, tmp_path / "a"), _copy(finished, tmp_path / "b")
    assert _mix(finished, a) == 0 and _mix(finished, b) == 0
    for name in ("weights.parquet", "groups.parquet"):
        assert pq.read_table(a / "tasks/default/mix" / name).equals(pq.read_table(b / "tasks/default/mix" / name))
    capsys.readouterr()
    assert _mix(finished, a) == 0
    assert "mix: skipped (complete)" in capsys.readouterr().out


def test_grouping_by_a_store_column(finished, tmp_path) -> None:
    work = _copy(finished, tmp_path)
    assert _mix(finished, work, "--mix-group-by", "topic") == 0
    weights = pq.read_table(work / "tasks/default/mix/weights.parquet").to_pydict()
    groups = pq.read_table(work / "tasks/default/mix/groups.parquet").to_pydict()
    topic = dict(zip(*pq.read_table(small_wiki_corpus(work), columns=["albat_id", "topic"]).to_pydict().values()))
    assert weights["label"] == sorted({topic[i] for i in groups["id"]})  # one group per topic, by label
    assert all(weights["label"][g] == topic[i] for i, g in zip(groups["id"], groups["group"]))


def test_calibration_runs_are_recorded(finished, tmp_path, capsys) -> None:
    work = _copy(finished, tmp_path)
    assert _mix(finished, work, "--mix-groups", 2, "--calibration-runs", 3) == 0
    record = json.loads((work / "tasks/default/_stages/mix.json").read_text())["summary"]
    assert record["how"] == "mde+calibration"
    assert len(record["calibration"]["tried"]) == len(record["calibration"]["measured"]) == 3
    assert sum(record["weights"].values()) == pytest.approx(1.0, abs=1e-5)


def test_a_mix_of_an_earlier_selection_is_not_applied(finished, tmp_path) -> None:
    work = _copy(finished, tmp_path)
    assert _mix(finished, work) == 0
    assert albat("filter", "--config", finished[1], "--work", work, "--budget", 10, "--quiet") == 0
    assert albat("emit", "--config", finished[1], "--work", work, "--quiet") == 0
    manifest = json.loads((work / "tasks/default/output/manifest.json").read_text())
    assert "mix" not in manifest["weights"]
    weights = _shards(work).filter(pa.compute.invert(_shards(work).column("albat_is_adaptation"))).column("albat_weight")
    assert len(set(weights.to_pylist())) == 1  # uniform again
    asked = tmp_path / "asked.toml"
    asked.write_text(Path(finished[1]).read_text() + "\n[mix]\nenabled = true\n")
    assert albat("emit", "--config", asked, "--work", work, "--quiet") == 2  # asked for, but stale


def test_mix_errors_are_one_line(finished, tmp_path, capsys) -> None:
    work = _copy(finished, tmp_path)
    capsys.readouterr()
    assert _mix(finished, work, "--mix-group-by", "no_such_column") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no_such_column" in err and "--keep-columns" in err
    assert _mix(finished, work, "--mix-surrogate", "lm") == 2
    assert "--mix-model DIR" in capsys.readouterr().err
    assert not (work / "tasks/default/mix").exists()


def test_run_skips_mix_unless_asked(finished, tmp_path, capsys) -> None:
    work = _copy(finished, tmp_path)
    capsys.readouterr()
    assert albat("run", "--config", finished[1], "--work", work, "--quiet") == 0
    assert "mix:" not in capsys.readouterr().out and not (work / "tasks/default/mix").exists()
    assert albat("run", "--config", finished[1], "--work", work, "--mix", "--mix-steps", 20, "--quiet") == 0
    assert "mix: done" in capsys.readouterr().out and (work / "tasks/default/mix/weights.parquet").exists()


def test_the_experts_log_likelihoods_are_kept_and_give_the_recorded_estimate(finished, tmp_path) -> None:
    from albat.pipeline.mixture import mixture_nll

    work = _copy(finished, tmp_path)
    assert _mix(finished, work, "--mix-groups", 2) == 0
    log_lik = np.load(work / "tasks/default/mix/log_lik.npy")
    summary = json.loads((work / "tasks/default/_stages/mix.json").read_text())["summary"]
    assert log_lik.shape == (2, summary["units"])
    w = np.array(list(summary["weights"].values()))
    assert mixture_nll(log_lik, w) == pytest.approx(summary["estimated_loss"], abs=1e-5)
    assert summary["estimated_loss"] <= summary["estimated_loss_at_shares"] + 1e-9  # the optimum beats the shares
