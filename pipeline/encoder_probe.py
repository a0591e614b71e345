"""`--backend auto` / `--dtype auto`: choose the encoder runtime by measuring it on this machine.

A speed choice measured on one CPU is a bug on the next (bfloat16 is 2.3x faster than float32
where the CPU has native bf16 and 6x slower where it emulates it). So at the start of `embed`
every runtime that the hardware and the installed packages support encodes the same seeded
sample of the user's own corpus; each is checked against torch float32 on those texts (minimum
cosine of a text's two embeddings ≥ `MIN_COSINE`, and overlap of each text's 10 nearest
neighbours among the sample ≥ `MIN_OVERLAP`), and the fastest that passes is used. A candidate
already slower than the fastest passing one so far is stopped early (it cannot win). The table of
timings and agreements lands in `store.json` (`encoder_probe`). Pure parts (`candidates`,
`agreement`, `choose`) are tested on their own.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

MIN_COSINE = 0.999
MIN_OVERLAP = 0.98
NEIGHBOURS = 10
REFERENCE = ("torch", "float32")
# texts per timed step: a runtime is stopped between steps, so a slow one (bfloat16 emulated on an
# AVX2 CPU encodes ~1.5 long texts/s) costs at most one step past the winner's time
STEP = 8


@dataclass
class ProbeRow:
    backend: str
    dtype: str
    rows_per_second: float | None = None  # None: not finished (error, or stopped as slower)
    min_cosine: float | None = None
    knn_overlap: float | None = None
    passed: bool = False
    note: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.backend, self.dtype)


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of /proc/cpuinfo's first processor (x86 'flags', ARM 'Features')."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def native_bf16(flags: set[str]) -> bool:
    """bfloat16 matmuls in hardware: AVX-512 BF16 or AMX on x86, the BF16 extension on ARM.
    Without them torch emulates bf16 on the CPU, slower than float32."""
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def machine_flags() -> set[str]:
    try:
        return cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return set()


def candidates(device: str, bf16_native: bool, cuda_bf16: bool, onnx: bool,
               backend: str = "auto", dtype: str = "auto") -> list[tuple[str, str]]:
    """The (backend, dtype) runtimes worth timing here, reference first, restricted to the user's
    explicit `backend` or `dtype` when one of them is not auto."""
    if device.startswith("cuda"):
        out = [REFERENCE, ("torch", "float16")] + ([("torch", "bfloat16")] if cuda_bf16 else [])
    else:
        out = [REFERENCE] + ([("torch", "bfloat16")] if bf16_native else []) + [("torch", "int8")]
        out += [("onnx", "float32"), ("onnx", "int8")] if onnx else []
    return [c for c in out if backend in ("auto", c[0]) and dtype in ("auto", c[1])]


def agreement(reference: np.ndarray, vectors: np.ndarray, k: int = NEIGHBOURS) -> tuple[float, float]:
    """(min cosine between a text's two embeddings, mean overlap of its k nearest neighbours among
    the sample, itself excluded). Rows of both are unit vectors."""
    cosine = float(np.min(np.einsum("ij,ij->i", reference, vectors)))
    k = min(k, len(reference) - 1)
    if k < 1:
        return cosine, 1.0

    def neighbours(x: np.ndarray) -> np.ndarray:
        sims = x @ x.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1, kind="stable")[:, :k]

    a, b = neighbours(reference), neighbours(vectors)
    overlap = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))
    return cosine, overlap


def choose(rows: Iterable[ProbeRow]) -> tuple[str, str]:
    """The fastest row that passed; the reference (always passing) when nothing else did."""
    passing = [r for r in rows if r.passed and r.rows_per_second is not None]
    if not passing:
        return REFERENCE
    return max(passing, key=lambda r: (r.rows_per_second, r.key == REFERENCE)).key


def judge(row: ProbeRow, reference: np.ndarray, vectors: np.ndarray) -> ProbeRow:
    row.min_cosine, row.knn_overlap = agreement(reference, vectors)
    row.passed = row.min_cosine >= MIN_COSINE and row.knn_overlap >= MIN_OVERLAP
    if not row.passed:
        row.note = f"fails the bar (cosine ≥ {MIN_COSINE}, {NEIGHBOURS}-NN overlap ≥ {MIN_OVERLAP})"
    return row


class Stopped(Exception):
    """A candidate stopped part-way: slower than the best so far, or already failing the cosine bar."""


def encode_checked(encoder, texts: list[str], limit: float, reference: np.ndarray | None) -> tuple[float, np.ndarray]:
    """Seconds and vectors of `encoder` on `texts`, a batch at a time. Stops (raises `Stopped`)
    once past `limit` seconds, or as soon as a batch has a text whose cosine to `reference` is below
    the bar, so a runtime that cannot win costs at most one batch or the winner's time."""
    step = max(1, min(encoder.batch_size, STEP))
    parts = []
    started = time.perf_counter()
    for start in range(0, len(texts), step):
        part = encoder.encode(texts[start:start + step])
        parts.append(part)
        elapsed = time.perf_counter() - started
        if reference is not None:
            worst = float(np.min(np.einsum("ij,ij->i", reference[start:start + len(part)], part)))
            if worst < MIN_COSINE:
                raise Stopped(f"fails the bar: cosine {worst:.5f} < {MIN_COSINE} on the first {start + len(part)} texts")
        if elapsed > limit:
            raise Stopped(f"stopped: slower than the fastest passing runtime ({len(texts) / limit:.1f} rows/s)")
    return time.perf_counter() - started, np.concatenate(parts)


def run_probe(texts: list[str], make_encoder: Callable[[str, str], object], options: list[tuple[str, str]]
              ) -> tuple[tuple[str, str], list[ProbeRow]]:
    """Time every candidate on `texts` (after a warm-up batch), judge it against the reference,
    return the choice and the table. `make_encoder(backend, dtype)` returns a TextEncoder."""
    rows: list[ProbeRow] = []
    reference: np.ndarray | None = None
    best = np.inf
    for backend, dtype in options:
        row = ProbeRow(backend, dtype)
        rows.append(row)
        try:
            encoder = make_encoder(backend, dtype)
            warm = encoder.encode(texts[: min(len(texts), 4)])  # load, export and warm up outside the timing
            if reference is not None and (worst := float(np.min(np.einsum("ij,ij->i", reference[:len(warm)], warm)))) < MIN_COSINE:
                raise Stopped(f"fails the bar: cosine {worst:.5f} < {MIN_COSINE} on the first {len(warm)} texts")
            seconds, vectors = encode_checked(encoder, texts, best, reference)
        except Stopped as stop:
            row.note = str(stop)
            continue
        except Exception as exc:  # a runtime that cannot load or run here is skipped, not fatal
            row.note = f"unavailable: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}"
            if (backend, dtype) == REFERENCE:
                raise
            continue
        row.rows_per_second = round(len(texts) / seconds, 2)
        if reference is None:
            reference = vectors
        judge(row, reference, vectors)
        if row.passed:
            best = min(best, seconds)
    return choose(rows), rows


def probe_table(choice: tuple[str, str], rows: list[ProbeRow], sample: int, seed: int) -> dict:
    return {"choice": {"backend": choice[0], "dtype": choice[1]}, "sample_texts": sample, "seed": seed,
            "min_cosine": MIN_COSINE, "min_knn_overlap": MIN_OVERLAP,
            "rows": [{k: v for k, v in asdict(r).items()} for r in rows]}


def format_table(rows: list[ProbeRow], choice: tuple[str, str]) -> str:
    lines = []
    for r in rows:
        speed = f"{r.rows_per_second:.1f} rows/s" if r.rows_per_second is not None else "-"
        agree = (f"cos {r.min_cosine:.5f}, 10-NN {r.knn_overlap:.3f}" if r.min_cosine is not None else "")
        mark = " <- chosen" if r.key == choice else ""
        lines.append(f"  {r.backend}/{r.dtype}: {speed} {agree} {r.note}{mark}".rstrip())
    return "\n".join(lines)
