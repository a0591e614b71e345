"""Write one benchmark's table into BENCHMARKS.md between its own markers (other sections stay)."""
from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def commit() -> str:
    """HEAD, marked when the working tree differs from it (the numbers then belong to no commit)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!BENCHMARKS.md"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"
    return f"{head or '?'}{' + uncommitted changes' if dirty else ''}"


def command_line() -> str:
    """The command as typed: `python -m benchmarks.NAME ...` for a benchmark module."""
    script = Path(sys.argv[0])
    head = f"python -m benchmarks.{script.stem}" if script.parent.name == "benchmarks" else f"python {script}"
    return " ".join([head, *sys.argv[1:]])


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(path: Path, name: str, title: str, body: str) -> None:
    """Replace (or append) the section `name` of the benchmark file."""
    command = command_line()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"<!-- bench:{name} -->\n## {title}\n\n- machine: {machine()}\n- date: {stamp}, commit {commit()}\n"
               f"- command: `{command}`\n\n{body.strip()}\n<!-- /bench:{name} -->")
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery number here was measured by the command shown with it.\n"
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def save_figure(fig, path: Path) -> Path:
    """Lay out and write a matplotlib figure where BENCHMARKS.md links it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def parse_variants(items: list[str]) -> dict[str, tuple[str, list[str]]]:
    """["albat_red=albat:objective=reducible,relevance_weight=1"] -> {name: (method, [k=v, ...])}."""
    out = {}
    for item in items:
        name, _, spec = item.partition("=")
        method, _, opts = spec.partition(":")
        if not name or not method:
            raise SystemExit(f"--variant {item!r}: expected NAME=METHOD[:key=value,...]")
        out[name] = (method, [o for o in opts.split(",") if o])
    return out


def paired_difference(mine: dict[int, float], other: dict[int, float]) -> tuple[float, float, int]:
    """mine − other seed by seed, over the seeds both ran: the mean, the std of the per-seed differences
    (ddof 1; 0 with one seed) and the number of seeds. The seed fixes the adaptation draw and the training
    noise for every method alike, so the paired std is the spread that belongs to the methods' difference;
    the unpaired seed std also carries how much each draw of n_A examples helps or hurts every method."""
    seeds = sorted(set(mine) & set(other))
    diffs = np.array([mine[s] - other[s] for s in seeds], dtype=float)
    if not len(diffs):
        return float("nan"), float("nan"), 0
    return float(diffs.mean()), float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0, len(diffs)
