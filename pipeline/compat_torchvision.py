"""`import open_clip` on a CPU torch whose only matching torchvision is a CUDA build.

open_clip imports torchvision (its image transforms). The torchvision wheel that matches the pinned
CPU torch is built against CUDA torch: its compiled ops library (`torchvision/_C*.so`) fails to load
beside a CPU torch, and `import torchvision` then dies registering fake kernels for operators that
were never defined ("operator torchvision::nms does not exist"). albat uses none of those ops
(detection: nms, roi_align, deform_conv2d); the transforms are pure Python.

`ensure_torchvision()` loads the ops library first, exactly as torchvision would. Only when that
really fails does it put an empty module in place of `torchvision._meta_registrations` (the fake
kernel registrations) so the rest of torchvision imports; the ops stay unavailable, as they already
were. Where the library loads, nothing is changed.

It has to run before anything imports torchvision, and not only open_clip does: transformers (so
sentence-transformers, the text encoder) imports torchvision whenever it is installed. So `import
albat` puts `TorchvisionGuard` on `sys.meta_path` (stdlib only, nothing imported): the first time
anything looks torchvision up, the guard runs `ensure_torchvision` and removes itself.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import types
from pathlib import Path

_STUB = "torchvision._meta_registrations"
_state: dict[str, str | None] = {}


def ops_library(package_dir: Path) -> Path | None:
    """torchvision's compiled ops library inside its package folder, or None when there is none."""
    found = sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd"))
    return found[0] if found else None


def ops_load_error() -> str | None:
    """Why torchvision's ops library cannot be loaded into this torch, or None when it loads (or when
    torchvision is not installed, or already imported: nothing to work around then)."""
    if "torchvision" in sys.modules:
        return None
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    library = ops_library(Path(list(spec.submodule_search_locations)[0]))
    if library is None:
        return "no compiled ops library in the torchvision package"
    import torch

    try:
        torch.ops.load_library(str(library))
    except (OSError, RuntimeError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def ensure_torchvision() -> str | None:
    """Make `import torchvision` (and so `import open_clip`) work here; returns why the workaround
    was applied, or None when torchvision's ops loaded and nothing was changed. Idempotent."""
    if "reason" not in _state:
        reason = ops_load_error()
        if reason is not None and _STUB not in sys.modules:
            stub = types.ModuleType(_STUB)
            stub.__doc__ = f"albat: torchvision's compiled ops could not be loaded ({reason}); fake kernels skipped"
            sys.modules[_STUB] = stub
        _state["reason"] = reason
    return _state["reason"]


def import_open_clip():  # noqa: ANN201 (the module)
    """open_clip, imported after `ensure_torchvision`; an AlbatError says how to install it."""
    from albat.stores.errors import AlbatError

    ensure_torchvision()
    try:
        import open_clip
    except ImportError as exc:
        raise AlbatError(f"--modality image needs open_clip ({exc}); install the image extra: "
                         "pip install -c constraints.txt -e '.[image]'") from None
    return open_clip


class TorchvisionGuard(importlib.abc.MetaPathFinder):
    """Runs `ensure_torchvision` when torchvision is first looked up, then steps aside (finds nothing
    itself: the normal finders import torchvision)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname == "torchvision" and self in sys.meta_path:
            sys.meta_path.remove(self)
            ensure_torchvision()
        return None


def install_guard() -> None:
    """Put one `TorchvisionGuard` first on `sys.meta_path` (no-op once torchvision is imported)."""
    if "torchvision" not in sys.modules and not any(isinstance(f, TorchvisionGuard) for f in sys.meta_path):
        sys.meta_path.insert(0, TorchvisionGuard())
