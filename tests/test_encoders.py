"""Encoders load offline, give unit float32 rows, and carry an identity that a store checks."""
from __future__ import annotations

import numpy as np
import pytest

from albat.pipeline.encoders import (TextEncoder, check_same_encoder, encoder_from_identity, resolve_device,
                               resolve_encoder_path)
from albat.stores.errors import AlbatError


def test_auto_device_is_cpu_without_a_gpu() -> None:
    import torch

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


def test_asking_for_a_missing_gpu_is_a_clear_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(AlbatError, match="--device cpu"):
        resolve_device("cuda:0")


def test_bundled_default_resolves_to_a_local_directory() -> None:
    from pathlib import Path

    path = Path(resolve_encoder_path("all-MiniLM-L6-v2"))
    assert (path / "modules.json").exists() and (path / "model.safetensors").exists()
    assert resolve_encoder_path("sentence-transformers/all-MiniLM-L6-v2") == str(path)


def test_unknown_model_name_fails_offline_with_the_fix() -> None:
    with pytest.raises(AlbatError, match="could not be loaded offline"):
        TextEncoder(name="no-such-org/no-such-model-xyz", device="cpu").encode(["x"])


def test_unsupported_dtype(tiny_encoder: str) -> None:
    with pytest.raises(AlbatError, match="float32, bfloat16, float16"):
        TextEncoder(name=tiny_encoder, dtype="int4", device="cpu").encode(["x"])


def test_encode_gives_unit_rows_in_input_order(tiny_encoder: str) -> None:
    encoder = TextEncoder(name=tiny_encoder, device="cpu")
    texts = ["a short one", "a much longer sentence about prime numbers and their distribution", "mid length text"]
    together = encoder.encode(texts)
    apart = np.stack([encoder.encode([t])[0] for t in texts])
    assert together.shape == (3, encoder.dim) == (3, 32) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert np.allclose(together, apart, atol=1e-4)  # batching and padding do not change a text's vector
    assert encoder.encode([]).shape == (0, 32)


def test_identity_round_trips_and_detects_another_encoder(tiny_encoder: str) -> None:
    encoder = TextEncoder(name=tiny_encoder, device="cpu")
    identity = encoder.identity()
    assert identity["dim"] == 32 and len(identity["probe"]) == 32 and identity["normalized"]
    again = encoder_from_identity(identity, device="cpu")
    check_same_encoder(identity, again, "here")  # the same encoder passes
    with pytest.raises(AlbatError, match="embedded with"):
        check_same_encoder(identity, TextEncoder(name="all-MiniLM-L6-v2", device="cpu"), "here")
    drifted = {**identity, "probe": [x + 0.1 for x in identity["probe"]]}
    with pytest.raises(AlbatError, match="different embeddings"):
        check_same_encoder(drifted, again, "here")


def test_cpu_bfloat16_pads_lengths_to_a_multiple_of_16_without_changing_the_vectors(tiny_encoder: str) -> None:
    """oneDNN caches a kernel per input shape: padded (masked) lengths bound the shapes a long run sees."""
    import numpy as np

    from albat.pipeline.encoder_backends import TorchBackend, pad_features

    backend = TorchBackend(tiny_encoder, "bfloat16", None, "cpu")
    texts = ["a short text", "a somewhat longer text with more words in it than the first one has, and then some"]
    features = backend.tokenize(texts)
    unpadded = backend.model.preprocess(texts)
    assert backend.pad_multiple == 16 and unpadded["input_ids"].shape[1] % 16 != 0
    assert features["input_ids"].shape[1] % 16 == 0 and features["input_ids"].shape[1] > unpadded["input_ids"].shape[1]
    assert int(features["attention_mask"].sum()) == int(unpadded["attention_mask"].sum())  # only masked tokens added
    padded, plain = backend.forward(features), backend.forward(unpadded)
    cosine = (padded * plain).sum(1) / np.linalg.norm(padded, axis=1) / np.linalg.norm(plain, axis=1)
    assert cosine.min() > 0.999
    assert pad_features(unpadded, 1) is unpadded
    assert TorchBackend(tiny_encoder, "float32", None, "cpu").pad_multiple == 1
