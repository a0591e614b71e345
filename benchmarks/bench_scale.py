"""Scale: 100k and 1M rows of real text through embed, index and query (`--parts text`), and the
index stage on 100k and 1M synthetic vectors under memory budgets (flat, IVF in
memory, IVF lists merged on disk, IVF-PQ, HNSW), side by side with autofaiss on the same vectors
and budget, and the embed stage through the Ray executor against local on the same real texts.

The index runs also use a synthetic store of N clustered unit vectors (index configurations and
autofaiss on vectors that need no encoder time), indexed by `albat index` in a separate process,
which reports its own peak RSS. Synthetic vectors are not text embeddings: the recall here says the
machinery works at this size, not what recall a real corpus gets (bench-index does that).
autofaiss runs in its own virtual environment (`.venv-autofaiss`; it pins numpy<2)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.report import markdown_table, write_section
from albat.pipeline.index import exact_search
from albat.stores.embedding_store import ID, ROW, SOURCE, TEXT_HASH, EmbeddingStore


# Runs the CLI in a child process and reports that process's own peak RSS on stderr.
# Peak anonymous memory is sampled beside it (benchmarks/peakmem.py): RSS also counts reclaimable file pages.
CHILD = ("import resource, sys; from benchmarks.peakmem import PeakAnon; anon = PeakAnon().start(); "
         "from albat.pipeline.cli import main; rc = main(sys.argv[1:]); "
         "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, 'PEAK_ANON_KIB', anon.stop(), "
         "file=sys.stderr); sys.exit(rc)")


def synthetic_store(root: Path, n: int, d: int, shard_rows: int, seed: int) -> EmbeddingStore:
    """N unit vectors around 1000 random centres (noise comparable to the centre spread), sharded."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, d)).astype(np.float32)
    store = EmbeddingStore(root)
    store.write_info({"fingerprint": f"synthetic-{n}-{d}-{seed}", "complete": False, "dim": d,
                      "encoder": {"name": "synthetic", "dim": d}, "shard_rows": shard_rows})
    for index, start in enumerate(range(0, n, shard_rows)):
        rows = min(shard_rows, n - start)
        vectors = centres[rng.integers(0, len(centres), rows)] + 1.2 * rng.standard_normal((rows, d)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = np.arange(start, start + rows, dtype=np.int64)
        meta = pa.table({ID: ids, SOURCE: pa.array(["synthetic"] * rows), ROW: ids,
                         TEXT_HASH: rng.integers(-2**62, 2**62, rows), "text": pa.array([f"row {i}" for i in ids])})
        store.write_shard(index, vectors, meta)
    store.write_id_index()
    store.write_info({**store.info, "rows": n, "shards": len(store.shard_indices()), "complete": True})
    return store


AUTOFAISS_PY = Path(".venv-autofaiss/bin/python")
FLAGS = {"disk": ["--on-disk"], "hnsw": ["--index-type", "hnsw"]}


def run_index(work: Path, budget: str, flat_max: str, extra: str) -> dict:
    """`albat index` in its own process under a budget; its infos plus the process's peak RSS and wall time."""
    (work / "_stages").mkdir(exist_ok=True)
    (work / "_stages" / "index.json").unlink(missing_ok=True)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CHILD, "index", "--work", str(work), "--quiet", "--memory-budget",
                             budget, "--flat-max-rows", flat_max, *FLAGS.get(extra, [])], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    infos = json.loads((work / "index" / "index_infos.json").read_text())
    infos["peak_rss_mib"] = int(result.stderr.split("PEAK_RSS_KIB")[-1].split()[0]) / 1024
    infos["peak_anon_mib"] = int(result.stderr.split("PEAK_ANON_KIB")[-1].split()[0]) / 1024
    infos["wall"] = wall
    infos["file_mib"] = sum(p.stat().st_size for p in (work / "index").iterdir() if p.is_file()) / 2**20
    return infos


def index_row(n: int, budget: str, flat_max: str, extra: str, infos: dict) -> list:
    tuned = infos["nprobe"] or (f"ef {infos['ef_search']}" if infos.get("ef_search") else "-")
    return [f"{n:,}", budget, flat_max, extra or "memory", infos["index_key"], f"{infos['estimated_bytes'] / 2**20:.0f}",
            f"{infos['file_mib']:.0f}", f"{infos['peak_rss_mib']:.0f}", f"{infos['peak_anon_mib']:.0f}",
            f"{infos['train_seconds']:.0f}",
            f"{infos['build_seconds']:.0f}", f"{infos['wall']:.0f}", tuned, f"{infos['recall_at_k']:.3f}",
            f"{infos['queries_per_s']:.0f}"]


def autofaiss_budget(budget: str) -> str:
    """albat's '2GB' as autofaiss writes it ('2G')."""
    return budget.upper().replace("IB", "").replace("B", "")


def run_autofaiss(store: EmbeddingStore, tmp: Path, budget: str) -> list | str:
    """autofaiss build_index over the same .npy shards, budget and queries as the albat run."""
    if not AUTOFAISS_PY.exists():
        return "not run: .venv-autofaiss missing (`make bench-scale` creates it)"
    n = int(store.info["rows"])
    positions = np.sort(np.random.default_rng(1).choice(n, size=min(1000, n), replace=False))  # the stage's queries
    queries = store.vectors_at(positions)
    _, exact = exact_search(store, queries, 10)
    np.save(tmp / "queries.npy", queries)
    np.save(tmp / "exact.npy", exact)
    out = tmp / f"autofaiss-{budget}"
    out.mkdir()
    started = time.perf_counter()
    result = subprocess.run([str(AUTOFAISS_PY), "benchmarks/autofaiss_child.py", str(store.shard_dir), str(out),
                             str(tmp / "queries.npy"), str(tmp / "exact.npy"), autofaiss_budget(budget), "8G"],
                            capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        return f"failed: {result.stderr.strip().splitlines()[-1][:200]}"
    got = json.loads(result.stdout.strip().splitlines()[-1])
    return [f"{n:,}", budget, "-", "autofaiss", got["key"], "-", f"{(got['index_bytes'] or 0) / 2**20:.0f}",
            f"{got['peak_rss_kib'] / 1024:.0f}", f"{got['peak_anon_kib'] / 1024:.0f}", "-", f"{got['build_seconds']:.0f}",
            f"{wall:.0f}",
            str(got["params"])[:40], f"{got['recall']:.3f}", f"{got['queries_per_s']:.0f}"]


def embed_once(tmp: Path, corpus: Path, name: str, flags: list[str]) -> tuple[float, Path]:
    work = tmp / name
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "albat.pipeline.cli", "embed", "--work", str(work), "--input",
                             str(corpus), "--shard-rows", "128", "--dtype", "float32", "--backend", "torch", "--quiet",
                             *flags], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    return time.perf_counter() - started, work


def ray_overhead(tmp: Path, rows: int, rounds: int) -> tuple[list[list], bool]:
    """Wall time of `albat embed` on the same real texts, local against --executor ray (local Ray,
    one actor with both cores), interleaved rounds; and whether the stores' bytes agree."""
    corpus = tmp / "texts.parquet"
    pq.write_table(pq.read_table("data/wiki/demo.parquet").slice(0, rows), corpus)
    ray = ["--executor", "ray", "--ray-cpus", "2", "--ray-actors", "1", "--ray-actor-cpus", "2"]
    times: dict[str, list[float]] = {"local": [], "ray": []}
    works = {}
    for r in range(rounds):
        for name, flags in (("local", []), ("ray", ray)):
            seconds, works[name] = embed_once(tmp, corpus, f"{name}-{r}", flags)
            times[name].append(seconds)
            print(name, f"{seconds:.1f} s", flush=True)
    same = all((works["local"] / "store" / "shards" / f.name).read_bytes() == f.read_bytes()
               for f in (works["ray"] / "store" / "shards").iterdir())
    local = statistics.median(times["local"])
    out = []
    for name in ("local", "ray"):
        median = statistics.median(times[name])
        out.append([name, f"{rows:,}", " / ".join(f"{t:.1f}" for t in times[name]), f"{median:.1f}",
                    f"{rows / median:.1f}", f"{median / local:.2f}x"])
    return out, same


def real_text_corpus(root: Path, n: int, seed: int, file_rows: int = 100_000) -> list[Path]:
    """N rows of real text: the selection benchmark's pool (WordNet glosses, FOLDOC entries, German
    fortunes, VERA acronyms, Wikipedia summaries) in a seeded order (the file is sorted by source:
    a 100k prefix of it would hold no long Wikipedia text, and an encoder's memory follows the longest
    batches it meets), repeated; repeat 0 is the pool itself, each later
    repeat drops one word per text, chosen by a generator seeded [seed, repeat]. Parquet files of
    `file_rows` rows (id, text); the same seed gives the same bytes, and N=100k is the first file of N=1M."""
    texts = pq.read_table("data/select/pool.parquet", columns=["text"])["text"].to_pylist()
    pool = [texts[i] for i in np.random.default_rng([seed, 0, 0]).permutation(len(texts))]  # every prefix: the same mix
    root.mkdir(parents=True, exist_ok=True)
    files, texts, start = [], [], 0
    for position in range(n):
        repeat, i = divmod(position, len(pool))
        text = pool[i]
        if repeat:
            if i == 0:
                drops = np.random.default_rng([seed, repeat]).integers(0, 2**31, len(pool))
            words = text.split()
            if len(words) > 1:
                del words[drops[i] % len(words)]
            text = " ".join(words)
        texts.append(text)
        if len(texts) == file_rows or position == n - 1:
            files.append(root / f"part-{len(files):03d}.parquet")
            pq.write_table(pa.table({"id": np.arange(start, start + len(texts), dtype=np.int64), "text": texts}), files[-1])
            start += len(texts)
            texts = []
    return files


def run_stage(argv: list[str]) -> dict:
    """One CLI stage in its own process: wall seconds, peak RSS and peak anonymous memory (MiB)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CHILD, *argv, "--quiet"], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return {"wall": wall, "rss": int(result.stderr.split("PEAK_RSS_KIB")[-1].split()[0]) / 1024,
            "anon": int(result.stderr.split("PEAK_ANON_KIB")[-1].split()[0]) / 1024, "stderr": result.stderr}


def text_scale(tmp: Path, sizes: list[int], budget: str, adaptation: str) -> list[list]:
    """embed, index (IVF lists merged on disk under `budget`) and query on N rows of real text, each
    stage in its own process: rows/s, wall time, peak RSS and anonymous memory; the index's recall and
    queries/s as the stage measures them."""
    rows = []
    for n in sizes:
        work = tmp / f"text-{n}"
        files = real_text_corpus(tmp / f"text-corpus-{n}", n, seed=0)
        embed = run_stage(["embed", "--work", str(work), "--input", *map(str, files)])
        runtime = json.loads((work / "store" / "store.json").read_text()).get("encoder", {})
        print(f"embed {n}: {embed['wall']:.0f} s, {n / embed['wall']:.0f} rows/s", flush=True)
        index = run_stage(["index", "--work", str(work), "--memory-budget", budget, "--flat-max-rows", "10000",
                           "--on-disk"])
        infos = json.loads((work / "index" / "index_infos.json").read_text())
        print(f"index {n}: {index['wall']:.0f} s {infos['index_key']}", flush=True)
        query = run_stage(["query", "--work", str(work), "--adaptation", adaptation])
        print(f"query {n}: {query['wall']:.0f} s", flush=True)
        label = f"{runtime.get('backend', '?')}/{runtime.get('dtype', '?')}"
        rows.append([f"{n:,}", "embed", label, f"{embed['wall']:.0f}", f"{n / embed['wall']:.0f}",
                     f"{embed['rss']:.0f}", f"{embed['anon']:.0f}", ""])
        rows.append([f"{n:,}", "index", f"{infos['index_key']}, {budget} on disk", f"{index['wall']:.0f}", "",
                     f"{index['rss']:.0f}", f"{index['anon']:.0f}",
                     f"recall@10 {infos['recall_at_k']:.3f}" + (f" at nprobe {infos['nprobe']}" if infos["nprobe"] else "")
                     + f", {infos['queries_per_s']:.0f} queries/s"])
        rows.append([f"{n:,}", "query", Path(adaptation).parent.name, f"{query['wall']:.0f}", "",
                     f"{query['rss']:.0f}", f"{query['anon']:.0f}", ""])
        import shutil
        shutil.rmtree(work)
        shutil.rmtree(tmp / f"text-corpus-{n}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--configs", default="2GB:1000000,2GB:10000,512MB:10000:disk,2GB:10000:hnsw",
                        help="comma-separated BUDGET:FLAT_MAX_ROWS[:disk|hnsw]")
    parser.add_argument("--hnsw-max-rows", type=int, default=100_000,
                        help="skip HNSW above this size (its build is the slowest on 2 cores)")
    parser.add_argument("--autofaiss", default="2GB", help="budgets of the autofaiss runs (largest size only)")
    parser.add_argument("--embed-rows", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", default="BENCHMARKS.md")
    parser.add_argument("--section", default="scale", help="BENCHMARKS.md section name")
    parser.add_argument("--parts", default="index,text", help="comma-separated: index (synthetic vectors, autofaiss, "
                        "Ray embed), text (real text through embed, index and query)")
    parser.add_argument("--text-sizes", default="100000,1000000")
    parser.add_argument("--text-budget", default="512MB")
    parser.add_argument("--text-adaptation", default="data/select/foldoc/adapt.parquet")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if "text" in parts:
        text_part(args)
    if "index" not in parts:
        return
    rows, load = [], [os.getloadavg()[0]]
    sizes = [int(x) for x in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        embed_rows, same = ray_overhead(tmp, args.embed_rows, args.rounds) if args.embed_rows else ([], True)
        for n in sizes:
            work = tmp / f"n{n}"
            started = time.perf_counter()
            store = synthetic_store(work / "store", n, args.dim, 65_536, seed=0)
            print(f"synthetic store: {n} x {args.dim} in {time.perf_counter() - started:.0f} s", flush=True)
            for item in args.configs.split(","):
                budget, flat_max, *extra = item.split(":")
                if extra == ["hnsw"] and n > args.hnsw_max_rows:
                    continue
                rows.append(index_row(n, budget, flat_max, extra[0] if extra else "",
                                      run_index(work, budget, flat_max, extra[0] if extra else "")))
                load.append(os.getloadavg()[0])
                print(rows[-1], flush=True)
            if n == max(sizes):
                for budget in [b for b in args.autofaiss.split(",") if b]:
                    got = run_autofaiss(store, tmp, budget)
                    rows.append(got if isinstance(got, list) else [f"{n:,}", budget, "-", "autofaiss", got] + [""] * 10)
                    load.append(os.getloadavg()[0])
                    print(rows[-1], flush=True)
            import shutil
            shutil.rmtree(work)
    cores = os.cpu_count() or 1
    shared = " (more runnable work than cores: times are under load, read ratios)" if max(load) > cores + 0.5 else ""
    body = (f"Load average during the run: {min(load):.1f} to {max(load):.1f} on {cores} cores{shared}.\n\n"
            f"**Index stage.** Synthetic unit vectors x {args.dim} (1000 Gaussian clusters; not text embeddings), "
            "shards of 65,536, indexed by `albat index --memory-budget B --flat-max-rows F [--on-disk | --index-type "
            "hnsw]` in its own process. Planned MiB: the plan's formula (on disk: what stays resident). File MiB: "
            "knn.index plus knn.ivfdata. Peak RSS is the whole process (Python, FAISS, the training sample, the index "
            "being filled); the on-disk lists and the store's shards are memory-mapped, so their pages count as resident "
            "while the stage reads them (file-backed, reclaimable). Peak anon MiB: the process's own anonymous memory "
            "(RssAnon, sampled every 20 ms by benchmarks/peakmem.py), what a memory budget has to bound. recall@10 is measured by the stage on "
            "1000 corpus vectors against exact search (for PQ, before the query stage's exact re-ranking). autofaiss "
            "rows: `autofaiss.build_index` (2.18, its own venv) on the same .npy shards with "
            "`max_index_memory_usage` = the budget, recall@10 on the same 1000 queries against the same exact "
            "neighbours; its build time includes its own parameter tuning.\n\n"
            + markdown_table(["rows", "budget", "flat_max_rows", "lists", "index", "planned MiB", "file MiB",
                              "peak RSS MiB", "peak anon MiB", "train s", "build s", "wall s", "nprobe / ef", "recall@10",
                              "queries/s"], rows)
            + ((f"\n\n**Embed through Ray.** `albat embed` on the first {args.embed_rows:,} texts of "
            "`data/wiki/demo.parquet` (real text), all-MiniLM-L6-v2 torch float32, shards of 128, in a fresh "
            "process each (wall time includes start-up and, for Ray, starting a local Ray with 2 CPUs and one "
            "encoder actor holding both cores); rounds interleaved. Stores byte-identical: "
            f"{'yes' if same else 'NO'}.\n\n"
            + markdown_table(["executor", "rows", "wall s per round", "median s", "rows/s", "vs local"], embed_rows)) if embed_rows else ""))
    write_section(Path(args.out), args.section, "Scale: index at 100k and 1M vectors, autofaiss, the Ray executor", body)
    print(body)


def text_part(args: argparse.Namespace) -> None:
    load = [os.getloadavg()[0]]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory(dir=os.environ.get("ALBAT_BENCH_TMP")) as tmp_name:
        rows = text_scale(Path(tmp_name), [int(x) for x in args.text_sizes.split(",")], args.text_budget,
                          args.text_adaptation)
    load.append(os.getloadavg()[0])
    cores = os.cpu_count() or 1
    body = (f"Run {started} to {time.strftime('%H:%M UTC', time.gmtime())}; load average {min(load):.1f} to "
            f"{max(load):.1f} on {cores} cores.\n\n"
            "**Real text through embed, index and query.** The corpus is the selection benchmark's pool "
            "(`data/select/pool.parquet`: WordNet glosses, FOLDOC entries, German fortunes, VERA acronyms, Wikipedia "
            "summaries; 135,433 texts, 127 characters on average) in a seeded order, so that 100k and 1M rows hold the same "
            "mix of short and long texts, repeated to N rows: repeat 0 is the pool, each later repeat drops one word per "
            "text (seeded). Real text repeated with variation, not 1M distinct texts. "
            "Parquet files of 100k rows; each stage is the CLI in its own process with its defaults (encoder runtime "
            "`auto`: the probe's choice on this CPU), except the index: `--memory-budget "
            f"{args.text_budget} --flat-max-rows 10000 --on-disk` (IVF lists merged on disk). The query stage retrieves "
            f"for `{args.text_adaptation}` (exact-duplicate scan of every shard, k-NN, re-rank). Wall time includes "
            "start-up and, for embed, the runtime probe. Peak anon MiB: the process's anonymous memory (RssAnon "
            "sampled every 20 ms); peak RSS also counts memory-mapped store pages.\n\n"
            + markdown_table(["rows", "stage", "runtime / index / adaptation set", "wall s", "rows/s", "peak RSS MiB",
                              "peak anon MiB", "search"], rows))
    write_section(Path(args.out), "scale-text", "Scale: 100k and 1M rows of real text through embed, index and query",
                  body)
    print(body)


if __name__ == "__main__":
    main()
