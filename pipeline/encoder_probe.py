"""`--backend auto` / `--dtype auto`: choose the encoder runtime by measuring it on this machine.

A speed choice measured on one CPU is a bug on the next (bfloat16 is 2.3x faster than float32
where the CPU has native bf16 and 6x slower where it emulates it). So at the start of `embed`
every runtime that the hardware and the installed packages support encodes the same seeded
sample of the user's own corpus; each is checked against torch float32 on those texts (minimum
cosine of a text's two embeddings ≥ `MIN_COSINE`, and overlap of each text's 10 nearest
neighbours among the sample ≥ `MIN_OVERLAP`), and the fastest that passes is used. Candidates are
timed batch by batch in turn (see `run_probe`), and one clearly slower than the fastest, or
already off the cosine bar, is stopped early. The table of
timings and agreements lands in `store.json` (`encoder_probe`). Pure parts (`candidates`,
`agreement`, `choose`) are tested on their own; `run_probe` on fake runtimes.

The probe costs tens of seconds (every runtime loads the model and encodes the sample), so its
table is kept per machine in albat's cache (`cache_dir()/encoder-probe/<key>.json`) and reused by
the next `embed` whose key matches: the CPU's flags and model name, the device, the encoder (its
name, and the content hash of a local model directory), max_seq_length, batch size, torch threads,
the runtimes timed and the versions of torch, sentence-transformers and onnxruntime. Another CPU,
other weights or another library version is another key, so the choice is always one measured on
hardware and software like this run's. `embed --probe-cache false` measures afresh (and overwrites the cached table).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

MIN_COSINE = 0.999
MIN_OVERLAP = 0.98
NEIGHBOURS = 10
REFERENCE = ("torch", "float32")


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


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.einsum("ij,ij->i", a, b)))


def agreement(reference: np.ndarray, vectors: np.ndarray, k: int = NEIGHBOURS) -> tuple[float, float]:
    """(min cosine between a text's two embeddings, mean overlap of its k nearest neighbours among
    the sample, itself excluded). Rows of both are unit vectors."""
    cosine = _min_cosine(reference, vectors)
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


SLOWER = 1.5  # a runtime whose time so far exceeds this many times the fastest one still in the running stops


def run_probe(texts: list[str], make_encoder: Callable[[str, str], object], options: list[tuple[str, str]]
              ) -> tuple[tuple[str, str], list[ProbeRow]]:
    """Time every candidate on `texts` and judge it against the reference (options[0], torch
    float32); return the choice and the table. `make_encoder(backend, dtype)` returns a TextEncoder.

    Texts are sorted longest first and cut into batches of the encoder's batch size, as `embed`
    encodes them. Each candidate is loaded and warmed up on the first texts first (a runtime whose
    warm-up vectors already fail the cosine bar is dropped then). The batches are then timed round
    by round, every candidate on the same batch in a rotating order, so a load that drifts during
    the probe hits every candidate alike. After each round a candidate leaves the running when one
    of its texts falls below the cosine bar, or when its time so far is over `SLOWER` times the
    fastest candidate's (the reference always runs: the others are judged against it)."""
    rows = [ProbeRow(b, d) for b, d in options]
    live: dict[tuple[str, str], object] = {}
    warm_reference: np.ndarray | None = None
    warm_texts = texts[: min(len(texts), 4)]
    for row in rows:
        try:
            encoder = make_encoder(*row.key)
            warm = encoder.encode(warm_texts)  # load, export and JIT outside the timing
        except Exception as exc:  # a runtime that cannot load or run here is skipped, not fatal
            if row.key == REFERENCE:
                raise
            row.note = f"unavailable: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}"
            continue
        if warm_reference is None:
            warm_reference = warm
        elif (worst := _min_cosine(warm_reference, warm)) < MIN_COSINE:
            row.note = f"fails the bar: cosine {worst:.5f} < {MIN_COSINE} on the first {len(warm)} texts"
            continue
        live[row.key] = encoder
    by_key = {r.key: r for r in rows}
    order = np.argsort([-len(t) for t in texts], kind="stable")
    size = max(1, int(getattr(live[REFERENCE], "batch_size", 64)))
    batches = [order[i:i + size] for i in range(0, len(texts), size)]
    seconds = {k: 0.0 for k in live}
    done = {k: 0 for k in live}
    parts: dict[tuple[str, str], list[np.ndarray]] = {k: [] for k in live}
    for n, batch in enumerate(batches):
        keys = list(live)
        keys = keys[n % len(keys):] + keys[:n % len(keys)]
        chunk = [texts[i] for i in batch]
        for key in keys:
            started = time.perf_counter()
            parts[key].append(live[key].encode(chunk))
            seconds[key] += time.perf_counter() - started
            done[key] += len(chunk)
        fastest = min(seconds[k] for k in live)
        for key in [k for k in live if k != REFERENCE]:
            if (worst := _min_cosine(parts[REFERENCE][-1], parts[key][-1])) < MIN_COSINE:
                by_key[key].note = f"fails the bar: cosine {worst:.5f} < {MIN_COSINE}"
            elif seconds[key] > SLOWER * fastest:
                by_key[key].note = f"stopped after {done[key]} texts: over {SLOWER}x the fastest runtime's time"
            else:
                continue
            by_key[key].rows_per_second = round(done[key] / seconds[key], 2)
            del live[key]
    reference = np.empty((len(texts), parts[REFERENCE][0].shape[1]), dtype=np.float32)
    reference[order] = np.concatenate(parts[REFERENCE])
    for key in live:
        vectors = np.empty_like(reference)
        vectors[order] = np.concatenate(parts[key])
        by_key[key].rows_per_second = round(len(texts) / seconds[key], 2)
        judge(by_key[key], reference, vectors)
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


def cpu_model(cpuinfo: str) -> str:
    """The first processor's model name (x86 'model name', ARM 'CPU part'), '' if none is given."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("model name", "CPU part"):
            return value.strip()
    return ""


def cache_key(fields: dict) -> str:
    """sha256 of the fields as sorted JSON: equal fields, equal key."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def load_cached(path: Path) -> dict | None:
    """A cached probe table, or None when there is none or it cannot be read (then the probe runs)."""
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(table, dict) and isinstance(table.get("choice"), dict)
    return table if ok and {"backend", "dtype"} <= set(table["choice"]) else None
