"""Runtimes that turn tokenized texts into sentence embeddings: torch (sentence-transformers, in
float32, bfloat16, float16 or dynamic int8) and onnx (onnxruntime, float32 or dynamic int8).

Every backend splits encoding in two: `tokenize(texts)` (CPU, releases the GIL in the Rust
tokenizer, so it can run on a prefetch thread) and `forward(features)` (the model). Vectors come
back as float32 rows, not yet normalised. The onnx backend exports a sentence-transformers model of
the common shape (Transformer → Pooling [→ Normalize]) once, cached by the content hash of the
model directory (`cache_dir()/onnx/<hash>/`), and never re-exports it for the same weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from albat.stores.atomic import sha256_file
from albat.stores.errors import AlbatError

TORCH_DTYPES = ("float32", "bfloat16", "float16", "int8")
ONNX_DTYPES = ("float32", "int8")
ONNX_OPSET = 17


def cache_dir() -> Path:
    """albat's cache of derived, re-creatable files: $ALBAT_CACHE_DIR, else $XDG_CACHE_HOME/albat."""
    if os.environ.get("ALBAT_CACHE_DIR"):
        return Path(os.environ["ALBAT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "albat"


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _load_sentence_transformer(path: str, device: str, torch_dtype: Any) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-load "Loading weights" bar is noise in a pipeline log
    try:
        return SentenceTransformer(path, device=device, model_kwargs={"torch_dtype": torch_dtype})
    except Exception as exc:  # sentence-transformers raises OSError, ValueError, HF errors...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AlbatError(f"encoder '{path}' could not be loaded offline ({first}); pass a local model "
                         "directory or a name already in the HF cache") from None


class TorchBackend:
    """sentence-transformers on torch; int8 is torch's dynamic quantisation of every Linear (CPU)."""

    name = "torch"

    def __init__(self, path: str, dtype: str, max_seq_length: int | None, device: str):
        import torch

        if dtype not in TORCH_DTYPES:
            raise AlbatError(f"encoder dtype '{dtype}' not supported; use auto, float32, bfloat16, float16 (GPU) or int8")
        if dtype == "int8" and device != "cpu":
            raise AlbatError(f"encoder dtype int8 runs on the CPU only, not on '{device}'; use --dtype float16 on a GPU")
        torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype, torch.float32)
        self.model = _load_sentence_transformer(path, device, torch_dtype)
        if max_seq_length:
            self.model.max_seq_length = int(max_seq_length)
        if dtype == "int8":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                first = self.model[0]
                first.model = torch.ao.quantization.quantize_dynamic(first.model, {torch.nn.Linear}, dtype=torch.qint8)
        self.device = device
        # bfloat16/float16 on a CPU run on oneDNN, which caches a kernel (and its scratch memory) per input
        # shape: with a batch's own length as the shape, 1M short texts grew embed's memory from 1.3 to 4.6
        # GB. Lengths padded to a multiple of 16 (masked: the vectors do not change) bound the shapes.
        self.pad_multiple = PAD_MULTIPLE if dtype in ("bfloat16", "float16") and device == "cpu" else 1
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(getter())

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    def tokenize(self, texts: list[str]) -> Any:
        return pad_features(self.model.preprocess(texts), self.pad_multiple)

    def forward(self, features: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            moved = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in features.items()}
            out = self.model(moved)["sentence_embedding"]
            return out.float().cpu().numpy()


PAD_MULTIPLE = 16
_PADDED = ("input_ids", "attention_mask", "token_type_ids")


def pad_features(features: dict[str, Any], multiple: int) -> dict[str, Any]:
    """Token tensors right-padded with zeros (masked out) to a length that is a multiple of `multiple`."""
    import torch

    length = features["input_ids"].shape[1]
    extra = -length % multiple
    if not extra:
        return features
    return {k: torch.nn.functional.pad(v, (0, extra)) if k in _PADDED else v for k, v in features.items()}


def model_content_hash(path: Path) -> str:
    """sha256 over every file of a model directory (relative name and content), in sorted order.
    Computed once per process for the same files (names, sizes, modification times): embed's probe
    cache, the onnx export and the manifest all ask for it."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and ".git" not in p.parts)
    stamp = tuple((str(f.relative_to(path)), st.st_size, st.st_mtime_ns) for f, st in ((f, f.stat()) for f in files))
    return _files_hash(str(path), stamp)


@lru_cache(maxsize=16)
def _files_hash(root: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in stamp:
        digest.update(name.encode() + b"\0" + sha256_file(Path(root) / name).encode() + b"\0")
    return digest.hexdigest()


_POOLING = ("mean", "cls", "max", "lasttoken")


def _pooling_mode(model: Any) -> tuple[str, bool]:
    """(pooling mode, normalize) of a Transformer → Pooling [→ Normalize] model, else an error."""
    kinds = [type(m).__name__ for m in model]
    if len(kinds) < 2 or kinds[0] != "Transformer" or kinds[1] != "Pooling" or any(k != "Normalize" for k in kinds[2:]):
        raise AlbatError(f"the onnx backend exports Transformer → Pooling [→ Normalize] models; this one is "
                         f"{' → '.join(kinds)}: use --backend torch")
    config = model[1].get_config_dict()
    mode = config.get("pooling_mode")
    if mode is None:  # older configs: one boolean per mode
        mode = next((m for m in _POOLING if config.get(f"pooling_mode_{m}_tokens") or config.get(f"pooling_mode_{m}_token")), None)
    mode = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max", "lasttoken": "lasttoken"}.get(mode, mode)
    if mode not in _POOLING:
        raise AlbatError(f"the onnx backend does not know pooling '{mode}'; use --backend torch")
    return mode, len(kinds) > 2


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Sentence vectors from token states (n, t, d) and the attention mask (n, t), as
    sentence-transformers' Pooling computes them."""
    mask = mask.astype(np.float32)
    if mode == "mean":
        return (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return np.where(mask[..., None] > 0, hidden, -1e9).max(1)
    last = np.maximum(mask.sum(1).astype(np.int64) - 1, 0)  # right padding: the last real token
    return hidden[np.arange(len(hidden)), last]


def export_onnx(path: str) -> Path:
    """The float32 and int8 ONNX files of a model, exported once per content hash; returns their folder."""
    root = Path(path)
    if not root.is_dir():
        raise AlbatError(f"the onnx backend needs a local model directory, not '{path}'; use --backend torch")
    key = hashlib.sha256(json.dumps([model_content_hash(root), ONNX_OPSET, _torch_version()]).encode()).hexdigest()[:16]
    target = cache_dir() / "onnx" / key
    if (target / "done.json").exists():
        return target
    import torch

    model = _load_sentence_transformer(path, "cpu", torch.float32)
    mode, normalize = _pooling_mode(model)
    staging = target.parent / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    hf = model[0].auto_model.eval()

    class Hidden(torch.nn.Module):
        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    example = model.tokenizer(["albat onnx export", "a second, longer example text"], padding=True, return_tensors="pt")
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "hidden": {0: "batch", 1: "tokens"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Hidden(hf), (example["input_ids"], example["attention_mask"]), str(staging / "model.onnx"),
                          input_names=["input_ids", "attention_mask"], output_names=["hidden"], dynamic_axes=axes,
                          opset_version=ONNX_OPSET, dynamo=False)
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(staging / "model.onnx"), str(staging / "model.int8.onnx"), weight_type=QuantType.QInt8)
    model.tokenizer.save_pretrained(str(staging / "tokenizer"))
    (staging / "done.json").write_text(json.dumps({"source": str(root), "pooling": mode, "normalize": normalize,
                                                   "max_seq_length": int(model.max_seq_length), "opset": ONNX_OPSET}))
    try:
        os.rename(staging, target)
    except OSError:  # another process exported the same model first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


class OnnxBackend:
    """onnxruntime on the CPU over the exported transformer; pooling in numpy."""

    name = "onnx"

    def __init__(self, path: str, dtype: str, max_seq_length: int | None, device: str):
        if dtype not in ONNX_DTYPES:
            raise AlbatError(f"the onnx backend runs float32 or int8, not '{dtype}'")
        if device != "cpu":
            raise AlbatError(f"the onnx backend runs on the CPU here, not on '{device}'; use --backend torch")
        if not onnx_available():
            raise AlbatError("the onnx backend needs onnxruntime; `pip install onnxruntime` or use --backend torch")
        import onnxruntime as ort
        from transformers import AutoTokenizer

        folder = export_onnx(path)
        meta = json.loads((folder / "done.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = _torch_threads()
        options.inter_op_num_threads = 1
        file = "model.onnx" if dtype == "float32" else "model.int8.onnx"
        self.session = ort.InferenceSession(str(folder / file), options, providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
        self.mode = meta["pooling"]
        self._max_seq_length = int(max_seq_length or meta["max_seq_length"])
        self.dim = int(self.forward(self.tokenize(["albat"])).shape[1])

    @property
    def max_seq_length(self) -> int:
        return self._max_seq_length

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self._max_seq_length, return_tensors="np")
        return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}

    def forward(self, features: dict[str, np.ndarray]) -> np.ndarray:
        hidden = self.session.run(None, features)[0]
        return pool(hidden, features["attention_mask"], self.mode).astype(np.float32)


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


BACKENDS = {"torch": TorchBackend, "onnx": OnnxBackend}


@lru_cache(maxsize=8)
def load_backend(backend: str, path: str, dtype: str, max_seq_length: int | None, device: str) -> Any:
    if backend not in BACKENDS:
        raise AlbatError(f"encoder backend '{backend}' not supported; use auto, torch or onnx")
    return BACKENDS[backend](path, dtype, max_seq_length, device)
