"""Shard tasks: `plan_shards` by hand, ranges read alone, and `embed_task` equal to the sequential run."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from albat.pipeline.shards import FileRange, ShardTask, plan_shards
from albat.stores.corpus import CorpusSpec, FileCount, iter_batches, iter_file, scan_corpus


def test_plan_shards_by_hand():
    files = [("a", "parquet", 5), ("b", "jsonl", 0), ("c", "txt", 2), ("d", "parquet", 7)]
    tasks = plan_shards(files, 4)  # 14 rows: shards of 4, 4, 4, 2
    assert [(t.shard, t.position, t.rows) for t in tasks] == [(0, 0, 4), (1, 4, 4), (2, 8, 4), (3, 12, 2)]
    assert tasks[0].ranges == (FileRange("a", "parquet", 0, 4),)
    assert tasks[1].ranges == (FileRange("a", "parquet", 4, 5), FileRange("c", "txt", 0, 2),
                               FileRange("d", "parquet", 0, 1))  # the empty file b is in no task
    assert tasks[2].ranges == (FileRange("d", "parquet", 1, 5),)
    assert tasks[3].ranges == (FileRange("d", "parquet", 5, 7),)
    assert plan_shards(files, 100) == [ShardTask(0, 0, 14, (FileRange("a", "parquet", 0, 5),
                                                            FileRange("c", "txt", 0, 2),
                                                            FileRange("d", "parquet", 0, 7)))]
    assert plan_shards(files, 7)[1].ranges == (FileRange("d", "parquet", 0, 7),)  # a boundary on a file boundary
    assert plan_shards([("a", "txt", 0)], 3) == []
    with pytest.raises(ValueError):
        plan_shards(files, 0)


def test_tasks_travel_as_json():
    for task in plan_shards([("a", "parquet", 5), ("c", "txt", 9)], 4):
        assert ShardTask.from_json(task.to_json()) == task
        json.loads(task.to_json())


def test_scan_counts_valid_rows_per_file_and_ranges_read_alone(tmp_path):
    pq.write_table(pa.table({"text": ["a", "", "b", "c", "  ", "d"]}), tmp_path / "1.parquet")
    (tmp_path / "2.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["e", "", "f"]))
    spec = CorpusSpec(paths=[str(tmp_path)], skip_empty=True)
    counts = scan_corpus(spec, batch_rows=2)
    assert counts == [FileCount(str(tmp_path / "1.parquet"), "parquet", 4), FileCount(str(tmp_path / "2.jsonl"), "jsonl", 2)]
    stream = [(b.source, r, t) for b in iter_batches(spec, batch_rows=2)
              for r, t in zip(b.rows.to_pylist(), b.table.column("text").to_pylist())]
    for task in plan_shards(counts, 3):
        got = [(b.source, r, t) for part in task.ranges
               for b in iter_file(spec, tmp_path / part.source, part.format, 2, part.start, part.stop)
               for r, t in zip(b.rows.to_pylist(), b.table.column("text").to_pylist())]
        assert got == stream[task.position:task.position + task.rows]


def test_the_ray_executor_without_ray_is_one_clear_error(monkeypatch):
    import sys

    from albat.pipeline.ray_executor import start_ray
    from albat.stores.errors import AlbatError

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(AlbatError, match=r"--executor ray needs Ray: pip install .*'\.\[ray\]'.*or use --executor local"):
        start_ray(None, 2)
