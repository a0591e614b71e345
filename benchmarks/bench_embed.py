"""Embedding throughput, one run, the same texts: bare `SentenceTransformer.encode` in float32 (the
old default), every encoder runtime this machine supports run bare, the runtime probe itself, and
`albat embed` with `--backend auto --dtype auto`, with and without overlapping reading, tokenizing
and writing with encoding (the encoder's idle share). Texts: the demo corpus's Wikipedia summaries.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from benchmarks.report import markdown_table, write_section  # noqa: E402
from albat.pipeline import embed as embed_stage  # noqa: E402
from albat.pipeline import encoder_probe as probe  # noqa: E402
from albat.pipeline.config import load_config  # noqa: E402
from albat.pipeline.encoder_backends import onnx_available  # noqa: E402
from albat.pipeline.encoders import TextEncoder, normalize_rows, set_threads  # noqa: E402
from albat.stores.workdir import Workdir  # noqa: E402

ENCODER = "all-MiniLM-L6-v2"


def bare(runtime: tuple[str, str], texts: list[str]) -> tuple[float, np.ndarray]:
    """Seconds and vectors of the runtime's own loop: `SentenceTransformer.encode` for torch, the
    plain tokenize → session.run → pool loop (length-sorted batches of 64) for onnx."""
    encoder = TextEncoder(ENCODER, dtype=runtime[1], backend=runtime[0], batch_size=64, device="cpu")
    model = encoder.model
    if runtime[0] == "torch":
        run = lambda batch: model.model.encode(batch, batch_size=64, convert_to_numpy=True,  # noqa: E731
                                               show_progress_bar=False).astype(np.float32)
    else:
        def run(batch: list[str]) -> np.ndarray:
            order = np.argsort([-len(t) for t in batch], kind="stable")
            out = np.empty((len(batch), model.dim), dtype=np.float32)
            for start in range(0, len(batch), 64):
                rows = order[start:start + 64]
                out[rows] = model.forward(model.tokenize([batch[i] for i in rows]))
            return out
    run(texts[:8])  # load and warm up outside the timing
    started = time.perf_counter()
    vectors = normalize_rows(run(texts))
    return time.perf_counter() - started, vectors


def pipeline_run(subset: Path, work: Path, overlap: bool) -> tuple[float, dict]:
    config = load_config(None, {"work": str(work), "embed": {"input": [str(subset)], "id_column": "id"}})
    embed_stage.OVERLAP = overlap
    try:
        started = time.perf_counter()
        result = embed_stage.run_embed(config, Workdir(work), show_progress=False)
        return time.perf_counter() - started, result
    finally:
        embed_stage.OVERLAP = True
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", default="data/wiki/demo.parquet")
    parser.add_argument("--rows", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="BENCHMARKS.md")
    args = parser.parse_args()
    set_threads(0)
    table = pq.read_table(args.corpus).slice(0, args.rows)
    texts = table.column("text").to_pylist()
    flags = probe.machine_flags()
    runtimes = probe.candidates("cpu", probe.native_bf16(flags), False, onnx_available())
    timings: dict[tuple[str, str], float] = {}
    vectors: dict[tuple[str, str], np.ndarray] = {}
    for runtime in runtimes:
        timings[runtime], vectors[runtime] = bare(runtime, texts)
        print(f"bare {runtime}: {len(texts) / timings[runtime]:.1f} rows/s", flush=True)
    reference = vectors[probe.REFERENCE]
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "subset.parquet"
        pq.write_table(table, subset)
        config = load_config(None, {"work": str(Path(tmp) / "probe"), "embed": {"input": [str(subset)]}})
        started = time.perf_counter()
        encoder, probe_info = embed_stage.choose_encoder(config["embed"], embed_stage.corpus_spec(config["embed"]),
                                                         0, show=False)
        probe_seconds = time.perf_counter() - started  # the runs below reuse this process's measurement
        choice = (encoder.backend, encoder.dtype)
        # the comparisons that carry the ratios, interleaved round by round (the machine's load drifts)
        rounds: dict[str, list[float]] = {"fp32": [], "chosen": [], "sequential": [], "overlapped": []}
        results = {}
        for _ in range(args.repeats):
            rounds["fp32"].append(bare(probe.REFERENCE, texts)[0])
            rounds["chosen"].append(bare(choice, texts)[0])
            seconds, results["sequential"] = pipeline_run(subset, Path(tmp) / "work-seq", overlap=False)
            rounds["sequential"].append(seconds)
            seconds, results["overlapped"] = pipeline_run(subset, Path(tmp) / "work", overlap=True)
            rounds["overlapped"].append(seconds)
    median = {k: float(np.median(v)) for k, v in rounds.items()}
    timings[probe.REFERENCE], timings[choice] = median["fp32"], median["chosen"]
    base = len(texts) / timings[probe.REFERENCE]
    best = max(timings, key=lambda r: len(texts) / timings[r])
    rows = []
    for runtime in runtimes:
        speed = len(texts) / timings[runtime]
        cosine, overlap = probe.agreement(reference, vectors[runtime])
        passed = cosine >= probe.MIN_COSINE and overlap >= probe.MIN_OVERLAP
        rows.append([f"bare {runtime[0]}/{runtime[1]}" + (" (old default)" if runtime == probe.REFERENCE else ""),
                     f"{speed:.1f}", f"{speed / base:.2f}x", f"{cosine:.5f}", f"{overlap:.3f}", "yes" if passed else "no"])
    for label, key in (("albat embed, auto, one thing at a time", "sequential"), ("albat embed, auto (default)", "overlapped")):
        speed = len(texts) / median[key]
        rows.append([f"{label}: {results[key]['runtime']}", f"{speed:.1f}", f"{speed / base:.2f}x", "", "",
                     f"encoder busy {results[key]['encoder_busy']:.1%}"])
    overlapped = median["overlapped"]
    chosen_bare = len(texts) / timings[choice]
    pipeline_speed = len(texts) / overlapped
    probe_rows = probe_info["sample_texts"] if probe_info else 0
    allows = ("native bf16 (" + ", ".join(sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})) + ")"
              if probe.native_bf16(flags) else "no native bf16 (bfloat16 is not a candidate)")
    body = (f"all-MiniLM-L6-v2 (bundled), batch 64, max_seq_length 256, the first {len(texts)} texts of "
            f"`{args.corpus}` (mean {np.mean([len(t) for t in texts]):.0f} characters), torch threads = all cores; "
            f"this CPU has {allows}; onnxruntime {'installed' if onnx_available() else 'absent'}.\n\n"
            + f"Bare float32, the chosen runtime bare, and both pipeline runs: median of {args.repeats} interleaved "
              "rounds; the other runtimes once.\n\n"
            + markdown_table(["loop", "rows/s", "vs bare float32", "min cosine vs float32", "10-NN overlap",
                              "passes the bar"], rows)
            + f"\n\nThe probe (`--backend auto --dtype auto`, {probe_rows} texts, timed round by round; a runtime "
              f"over 1.5x the fastest one's time or off the cosine bar is stopped) took {probe_seconds:.1f} s and chose **{choice[0]}/{choice[1]}**; "
              f"the fastest bare runtime was {best[0]}/{best[1]}. "
              f"`albat embed` (auto, overlapped, probe excluded) ran at **{pipeline_speed / chosen_bare:.2f}x** its "
              f"chosen runtime's bare loop and **{pipeline_speed / base:.2f}x** bare float32. The bar: minimum "
              f"cosine ≥ {probe.MIN_COSINE} and 10-NN overlap ≥ {probe.MIN_OVERLAP} against torch float32 on the "
              "same texts (neighbours among these texts).")
    write_section(Path(args.out), "embed", "Embedding throughput: runtimes, the probe, and the pipeline", body)
    print(body)


if __name__ == "__main__":
    main()
