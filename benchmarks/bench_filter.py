"""The filter stage's cost on the demo work directory (run `make demo` first): every method's
selection time and time per candidate, and the surrogate methods on 1 torch thread (the stage's
choice for small ops, `pipeline/threads.py`) against all cores, in one run."""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.report import markdown_table, write_section  # noqa: E402
from albat.pipeline import threads  # noqa: E402
from albat.pipeline.config import load_config  # noqa: E402
from albat.pipeline.filter import FilterStage  # noqa: E402
from albat.pipeline.stage import run_stage  # noqa: E402
from albat.stores.workdir import Workdir  # noqa: E402

METHODS = ["knn", "random", "dsir", "classifier", "gradalign", "albat"]


def one(config_path: str, work: Path, method: str, small_threads: int) -> dict:
    shutil.rmtree(work / "tasks/default/filter", ignore_errors=True)
    (work / "tasks/default/_stages" / "filter.json").unlink(missing_ok=True)
    config = load_config(config_path, {"work": str(work), "filter": {"method": method}})
    before, threads.SMALL_OP_THREADS = threads.SMALL_OP_THREADS, small_threads
    try:
        return run_stage(FilterStage(config, Workdir(work), show_progress=False))
    finally:
        threads.SMALL_OP_THREADS = before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/demo.toml")
    parser.add_argument("--work", default="work/demo")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="BENCHMARKS.md")
    args = parser.parse_args()
    if not (Path(args.work) / "tasks/default/_stages" / "query.json").exists():
        raise SystemExit(f"{args.work}: no finished query stage; run `make demo` first")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        shutil.copytree(args.work, work, ignore=shutil.ignore_patterns("output", ".*.tmp-*"))
        for method in METHODS:
            settings = [(1, "1"), (0, f"{os.cpu_count()} (all)")] if method in ("albat", "gradalign") else [(1, "-")]
            for small_threads, label in settings:
                runs = [one(args.config, work, method, small_threads) for _ in range(args.repeats)]
                seconds = sorted(r["seconds"] for r in runs)
                median = seconds[len(seconds) // 2]
                fit = sorted(r.get("fit_seconds", 0.0) for r in runs)[len(runs) // 2]
                considered = runs[0]["considered"]
                rows.append([method, label, considered, f"{median:.3f}", f"{seconds[0]:.3f}-{seconds[-1]:.3f}",
                             f"{fit:.3f}" if method in ("albat", "gradalign") else "-",
                             f"{1000 * median / max(considered, 1):.3f}"])
                print(rows[-1], flush=True)
    body = (f"`albat filter` on the demo work directory (`{args.work}`: 16 adaptation examples, budget 64), "
            f"each setting {args.repeats} times in one process, median (min-max) seconds of the method's "
            "`select`, including the surrogate's fit for albat and gradalign. The torch-thread column applies to "
            "the surrogate methods; the stage runs them on 1 thread (`pipeline/threads.py`).\n\n"
            + markdown_table(["method", "torch threads", "candidates", "seconds (median)", "min-max", "surrogate fit s",
                              "ms per candidate"], rows))
    write_section(Path(args.out), "filter", "Filter stage: selection time per method and thread count", body)
    print(body)


if __name__ == "__main__":
    main()
