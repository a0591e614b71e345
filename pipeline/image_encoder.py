"""The open_clip image-and-caption encoder behind `--modality image`.

The model is an open_clip model name (`ViT-B-32`) or the path of an open_clip model-config JSON
(registered under its file stem; `scripts/pretrain_clip.py` writes one beside its checkpoint), with
`pretrained` an open_clip tag already in the local cache, a local checkpoint file, or unset for
seeded random weights (tests). Images and captions embed into one space; both come back as unit
float32 rows. The identity a store records holds the embeddings of a fixed synthetic probe image and
of the text probe sentence, so a query with other weights under the same names is refused.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from albat.pipeline.encoders import PROBE_TEXT, normalize_rows, resolve_device
from albat.stores.errors import AlbatError

DEFAULT_IMAGE_MODEL = "ViT-B-32"
INIT_SEED = 0  # random weights (pretrained unset) are drawn from this seed, so every load agrees


def probe_image() -> Any:
    """A fixed 64×64 RGB picture (gradients and a square), the image side of the identity probe."""
    from PIL import Image

    y, x = np.mgrid[0:64, 0:64]
    pixels = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    pixels[20:44, 20:44] = (250, 30, 30)
    return Image.fromarray(pixels, "RGB")


def model_name(model: str) -> str:
    """An open_clip config name; a path to a model-config JSON is registered under its stem."""
    path = Path(model).expanduser()
    if path.suffix == ".json":
        if not path.is_file():
            raise AlbatError(f"{path}: no such open_clip model config; pass a model name or an existing .json")
        from albat.pipeline.compat_torchvision import import_open_clip

        import_open_clip().add_model_config(str(path))
        return path.stem
    return model


@lru_cache(maxsize=4)
def load_clip(model: str, pretrained: str | None, device: str) -> tuple[Any, Any, Any]:
    """(model in eval mode, image preprocess, tokenizer), loaded once per process and offline."""
    import torch

    from albat.pipeline.compat_torchvision import import_open_clip

    open_clip = import_open_clip()
    name = model_name(model)
    if name not in open_clip.list_models():
        raise AlbatError(f"--image-model '{model}': not an open_clip model name or config .json "
                         f"(e.g. {DEFAULT_IMAGE_MODEL}, or the .json scripts/pretrain_clip.py writes)")
    if pretrained and not Path(pretrained).expanduser().is_file() \
            and pretrained not in open_clip.list_pretrained_tags_by_model(name):
        raise AlbatError(f"--image-pretrained '{pretrained}': neither a checkpoint file nor a tag of {name} "
                         f"({', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none'})")
    import logging

    quiet = logging.WARNING if not pretrained else logging.NOTSET  # "initialized randomly" is what was asked
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        logging.disable(quiet)
        try:
            clip, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=str(Path(pretrained).expanduser()) if pretrained and Path(pretrained).expanduser()
                .is_file() else pretrained, device=device)
        except (RuntimeError, OSError, ValueError) as exc:  # offline: a tag not in the cache cannot download
            raise AlbatError(f"open_clip {name} with pretrained '{pretrained}' could not be loaded offline "
                             f"({str(exc).splitlines()[0]}); pass a local checkpoint file as --image-pretrained") from None
        finally:
            logging.disable(logging.NOTSET)
    clip.eval()
    return clip, preprocess, open_clip.get_tokenizer(name)


@dataclass
class ImageEncoder:
    """open_clip image and text towers; `encode` takes preprocessed image tensors or PIL images."""

    name: str = DEFAULT_IMAGE_MODEL
    pretrained: str | None = None
    batch_size: int = 64
    device: str = "auto"
    modality: str = "image"
    stats: dict[str, float] = field(default_factory=lambda: {"forward_seconds": 0.0, "rows": 0})

    @property
    def backend(self) -> str:
        return "torch"

    @property
    def dtype(self) -> str:
        return "float32"

    def _loaded(self) -> tuple[Any, Any, Any]:
        return load_clip(self.name, self.pretrained, resolve_device(self.device))

    @property
    def preprocess(self) -> Any:
        """The image transform (PIL → tensor); the embed stage runs it in its decode workers."""
        return self._loaded()[1]

    @property
    def dim(self) -> int:
        return int(self._loaded()[0].visual.output_dim)

    def encode(self, images: Sequence[Any] | Any) -> np.ndarray:
        """Unit float32 rows of a batch of images: a (n, 3, H, W) tensor already preprocessed, or PIL images."""
        import torch

        clip, preprocess, _ = self._loaded()
        if not isinstance(images, torch.Tensor):
            images = list(images)
            if not images:
                return np.empty((0, self.dim), dtype=np.float32)
            images = torch.stack([preprocess(im) for im in images])
        out = []
        device = resolve_device(self.device)
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                started = time.perf_counter()
                out.append(clip.encode_image(images[start:start + self.batch_size].to(device)).float().cpu().numpy())
                self.stats["forward_seconds"] += time.perf_counter() - started
        self.stats["rows"] += len(images)
        return normalize_rows(np.concatenate(out)) if out else np.empty((0, self.dim), dtype=np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit float32 rows of captions through the text tower."""
        import torch

        clip, _, tokenizer = self._loaded()
        texts = list(texts)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                tokens = tokenizer(texts[start:start + self.batch_size]).to(resolve_device(self.device))
                out.append(clip.encode_text(tokens).float().cpu().numpy())
        return normalize_rows(np.concatenate(out))

    def probe_vector(self) -> np.ndarray:
        return self.encode([probe_image()])[0]

    def identity(self) -> dict[str, Any]:
        return {"modality": "image", "name": self.name, "pretrained": self.pretrained, "dim": self.dim,
                "backend": "torch", "dtype": "float32", "normalized": True,
                "probe": [round(float(x), 6) for x in self.probe_vector()],
                "text_probe": [round(float(x), 6) for x in self.encode_texts([PROBE_TEXT])[0]]}


def image_encoder_from_identity(identity: dict[str, Any], batch_size: int = 64, device: str = "auto") -> ImageEncoder:
    return ImageEncoder(name=identity["name"], pretrained=identity.get("pretrained"), batch_size=batch_size,
                        device=device)
