"""albat: offline data selection for adapting large models with scarce data (BAT / ALBAT).

The code lives in the repository's `pipeline/` (stages, methods, surrogates) and `stores/` (every
on-disk format) folders, installed as `albat.pipeline` and `albat.stores`.

The Python API (`albat.api`, loaded on first use, so `import albat` stays light):

    import albat
    p = albat.Pipeline("work", seed=0)
    p.embed(input=["corpus.parquet"]); p.index(); p.query(adaptation=["adaptation.jsonl"])
    selection = p.select(method="knn", budget=64)     # .table, .kept, .to_pandas()
    output = p.emit()                                 # .files, .manifest, .table(), .dataset()

or one call per stage: `albat.embed(work, input)`, `albat.index(work)`, `albat.query(work, adaptation)`,
`albat.select(work, method, budget)`, `albat.emit(work)`, `albat.run(config)`, `albat.sql(work, query)`,
`albat.report(work)`. Bad options raise `albat.AlbatError`.
"""

__version__ = "0.1.0"

# transformers and open_clip import torchvision, whose wheel for the pinned CPU torch is a CUDA build:
# make that import work (pipeline/compat_torchvision.py; stdlib only, nothing is imported here)
from albat.pipeline.compat_torchvision import install_guard as _install_guard  # noqa: E402

_install_guard()

_API = ("Pipeline", "StageResult", "Selection", "Output", "embed", "index", "query", "select", "mix", "emit", "run",
        "sql", "report")
__all__ = [*_API, "AlbatError", "__version__"]


def __getattr__(name: str):
    if name in _API:
        from albat import api

        return getattr(api, name)
    if name == "AlbatError":
        from albat.stores.errors import AlbatError

        return AlbatError
    raise AttributeError(f"module 'albat' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API, "AlbatError"])
