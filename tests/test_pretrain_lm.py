"""scripts/pretrain_lm.py, the benchmark's own backbone: a tiny run loads as an HF causal LM that the
`lm` surrogate accepts, and a second call with the same inputs is a cache hit."""
from __future__ import annotations

import importlib.util
import json

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import REPO
from lm_fixtures import SENTENCES


def test_pretrain_caches_by_content_and_loads(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("pretrain_lm", REPO / "scripts" / "pretrain_lm.py")
    pretrain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain)
    texts = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"text": SENTENCES * 3}), texts)
    kw = dict(vocab_size=300, layers=1, hidden=32, heads=2, max_length=16, steps=3, batch_size=4, progress=False)
    first = pretrain.pretrain_backbone(texts, "text", tmp_path / "cache", **kw)
    record = json.loads((first / pretrain.RECORD).read_text())
    assert record["hyperparameters"]["steps"] == 3 and record["rows"] == 30
    stamp = (first / pretrain.RECORD).stat().st_mtime_ns
    assert pretrain.pretrain_backbone(texts, "text", tmp_path / "cache", **kw) == first
    assert (first / pretrain.RECORD).stat().st_mtime_ns == stamp  # not retrained
    assert pretrain.pretrain_backbone(texts, "text", tmp_path / "cache", **{**kw, "steps": 4}) != first
    # the cache path is known without training (bench_lm --plan): the defaults' path, and these inputs'
    defaults = pretrain.default_backbone_dir(texts, "text", tmp_path / "cache")
    hparams = json.loads((first / pretrain.RECORD).read_text())["hyperparameters"]
    assert pretrain.backbone_dir(pretrain.sha256_file(texts), "text", tmp_path / "cache", hparams) == first
    assert defaults != first and defaults.parent == first.parent and not defaults.exists()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name) == []

    from albat.pipeline.surrogates.lm import LmSurrogate

    surrogate = LmSurrogate(first, steps=2, batch_size=4, projection_dim=16, max_length=16)
    examples = surrogate.examples(SENTENCES[:3])
    assert surrogate.losses(examples, "initial").shape == (3,)
    assert surrogate.gradients(examples, "initial").shape == (3, 16)
