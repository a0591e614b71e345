"""Shard tasks: the corpus stream cut into independent pieces with fixed positions.

The corpus stream is every input file in sorted order, each file's valid rows in file order (what
`stores.corpus.iter_batches` yields). Shard i holds stream rows [i·shard_rows, (i+1)·shard_rows);
its rows' default ids are their stream positions. `plan_shards` computes every shard from the
per-file valid row counts alone (`stores.corpus.scan_corpus`), so any worker can embed any shard,
in any order, and write what a sequential run writes.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Sequence


@dataclass(frozen=True)
class FileRange:
    source: str  # the input file (or HF directory), as the reader names it
    format: str  # its reader: parquet | jsonl | txt | hf
    start: int  # first valid row of the file in this range (counting valid rows only)
    stop: int  # one past the last


@dataclass(frozen=True)
class ShardTask:
    shard: int  # the shard index: its file names (part-NNNNN)
    position: int  # stream position of its first row = its first default id
    rows: int
    ranges: tuple[FileRange, ...]  # where its rows are, in stream order

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "ShardTask":
        raw = json.loads(text)
        return ShardTask(raw["shard"], raw["position"], raw["rows"], tuple(FileRange(**r) for r in raw["ranges"]))


def plan_shards(file_counts: Sequence[tuple[str, str, int]], shard_rows: int) -> list[ShardTask]:
    """Tasks for a stream of files given as (source, format, valid rows), in stream order: shard i
    covers stream positions [i·shard_rows, min((i+1)·shard_rows, total)). Files with no valid row
    appear in no task."""
    if shard_rows < 1:
        raise ValueError("shard_rows must be >= 1")
    file_starts, position = [], 0
    for source, fmt, count in file_counts:
        file_starts.append((source, fmt, position, position + count))
        position += count
    tasks = []
    for shard, first in enumerate(range(0, position, shard_rows)):
        last = min(first + shard_rows, position)
        ranges = tuple(FileRange(source, fmt, max(first, lo) - lo, min(last, hi) - lo)
                       for source, fmt, lo, hi in file_starts if lo < hi and lo < last and hi > first)
        tasks.append(ShardTask(shard, first, last - first, ranges))
    return tasks
