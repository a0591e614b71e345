"""pipeline/compat_torchvision.py on both paths: torchvision's ops load (nothing changed) and they
fail (the fake-kernel module is skipped and `import open_clip` works). Each case runs in a fresh
interpreter, since an import is process-wide."""
from __future__ import annotations

import json
import subprocess
import sys
import importlib.util
import textwrap

import pytest

if importlib.util.find_spec("open_clip") is None:  # the image extra (make setup installs it)
    pytest.skip("open_clip not installed", allow_module_level=True)


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_real_state_of_this_machine_imports_open_clip():
    """Whatever torchvision is installed here, ensure_torchvision then `import open_clip` works, and
    the workaround is applied exactly when loading the ops library really fails."""
    result = _run("""
        import json, sys
        from albat.pipeline import compat_torchvision as compat
        raw = compat.ops_load_error()
        reason = compat.ensure_torchvision()
        import open_clip
        model = open_clip.create_model("RN50", pretrained=None)  # builds, no download
        print(json.dumps({"raw": raw, "reason": reason, "stubbed": compat._STUB in sys.modules
                          and getattr(sys.modules[compat._STUB], "__doc__", "").startswith("albat")}))
    """)
    assert result["reason"] == result["raw"]
    assert result["stubbed"] == (result["raw"] is not None)


def test_failing_ops_are_worked_around():
    """Simulate the CUDA-build torchvision: its ops library fails to load; import still works."""
    result = _run("""
        import json, sys, torch
        def broken(path):
            raise OSError("libc10_cuda.so: cannot open shared object file (simulated)")
        torch.ops.load_library = broken
        from albat.pipeline import compat_torchvision as compat
        reason = compat.ensure_torchvision()
        import torchvision.transforms, open_clip
        print(json.dumps({"reason": reason, "stubbed": compat._STUB in sys.modules}))
    """)
    assert "simulated" in result["reason"]
    assert result["stubbed"]


def test_working_ops_change_nothing():
    """Simulate a matching CPU torchvision: the library loads, so no module is replaced."""
    result = _run("""
        import json, sys, torch
        torch.ops.load_library = lambda path: None
        from albat.pipeline import compat_torchvision as compat
        reason = compat.ensure_torchvision()
        print(json.dumps({"reason": reason, "stubbed": compat._STUB in sys.modules,
                          "imported": "torchvision" in sys.modules}))
    """)
    assert result == {"reason": None, "stubbed": False, "imported": False}


def test_already_imported_torchvision_is_left_alone(monkeypatch):
    from albat.pipeline import compat_torchvision as compat

    monkeypatch.setitem(sys.modules, "torchvision", object())
    assert compat.ops_load_error() is None


def test_import_albat_guards_every_later_torchvision_import():
    """transformers imports torchvision too: after `import albat` it imports here, whichever path."""
    result = _run("""
        import json, sys
        import albat
        from albat.pipeline import compat_torchvision as compat
        guarded = any(isinstance(f, compat.TorchvisionGuard) for f in sys.meta_path)
        from transformers import PreTrainedModel  # looks torchvision up, then imports it
        import torchvision
        print(json.dumps({"guarded": guarded, "left": any(isinstance(f, compat.TorchvisionGuard) for f in sys.meta_path),
                          "checked": "reason" in compat._state}))
    """)
    assert result == {"guarded": True, "left": False, "checked": True}
