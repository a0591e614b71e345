"""Adaptation rows and chat rows through the whole pipeline (tiny encoder, small real corpus).

- Adaptation rows keep every column into the emitted shards, cast to the backbone's types where the
  names are shared; `albat_id` is never null; the shards feed `datasets` + a torch DataLoader,
  pandas and pyarrow as they are.
- Chat rows (a `messages` list of {role, content} structs): what is embedded and hashed is the
  rendering of the messages, and the structure comes out in the shards unchanged.
Shards are found under the work directory by name (`part-*.parquet` outside the store), so the
tests do not depend on where emit puts its data folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import SmallWiki, albat, write_config

from albat.stores.chat import render_one
from albat.stores.embedding_store import EmbeddingStore

BUDGET = 12


def _shards(work: Path) -> list[str]:
    files = sorted(p for p in work.rglob("part-*.parquet") if "store" not in p.relative_to(work).parts)
    assert files, f"no emitted shards under {work}"
    return [str(p) for p in files]


def _config(tmp: Path, corpus: Path, adaptation: Path, encoder: str, embed: str = "", query: str = "") -> Path:
    return write_config(tmp / "run.toml", f"""
work = "work"
[embed]
input = ["{corpus}"]
encoder = "{encoder}"
shard_rows = 64
threads = 1
dtype = "float32"
{embed}
[query]
adaptation = ["{adaptation}"]
k = 8
dedup_threshold = 0.99999
{query}
[filter]
budget = {BUDGET}
[emit]
shard_rows = 5
""")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _adaptation_records(wiki: SmallWiki) -> list[dict]:
    return [json.loads(line) for line in wiki.adaptation.read_text().splitlines() if line.strip()]


# ----- adaptation columns -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def columns_run(small_wiki: SmallWiki, tiny_encoder: str, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The backbone keeps id (int64), title, topic, description; the adaptation set is Parquet with
    the same columns but `id` as int32, which the output must carry as the backbone's int64."""
    tmp = tmp_path_factory.mktemp("adaptation_columns")
    records = _adaptation_records(small_wiki)
    schema = pa.schema([("id", pa.int32()), ("title", pa.string()), ("text", pa.string()),
                        ("description", pa.string()), ("topic", pa.string())])
    adaptation = tmp / "adaptation.parquet"
    pq.write_table(pa.Table.from_pylist(records, schema=schema), adaptation)
    config = _config(tmp, small_wiki.corpus, adaptation, tiny_encoder,
                     embed='id_column = "id"\nkeep_columns = ["title", "topic", "description"]')
    assert albat("run", "--config", config, "--quiet") == 0
    return tmp / "work", records


def test_adaptation_rows_keep_every_column_typed_like_the_backbone(columns_run) -> None:
    work, records = columns_run
    table = pa.concat_tables(pq.read_table(f) for f in _shards(work))
    assert table.schema.field("id").type == pa.int64()  # the backbone's type, not the file's int32
    assert table.schema.field("albat_id").type == pa.int64() and table.column("albat_id").null_count == 0
    adapt = table.filter(table.column("albat_is_adaptation"))
    assert adapt.num_rows == len(records)
    order = np.argsort(adapt.column("albat_query").to_numpy())
    for column in ("id", "title", "text", "description", "topic"):
        assert [adapt.column(column)[int(i)].as_py() for i in order] == [r[column] for r in records], column
    # adaptation ids are negative and say which example they are; backbone ids are the corpus's own
    assert adapt.column("albat_id").to_pylist() == [-1 - q for q in adapt.column("albat_query").to_pylist()]
    backbone = table.filter(pc.invert(table.column("albat_is_adaptation")))
    assert backbone.column("albat_id").to_pylist() == backbone.column("id").to_pylist()
    assert backbone.num_rows == BUDGET


def test_shards_feed_a_torch_dataloader_over_every_column(columns_run) -> None:
    datasets = pytest.importorskip("datasets")
    torch = pytest.importorskip("torch")
    work, records = columns_run
    ds = datasets.load_dataset("parquet", data_files=_shards(work), split="train").with_format("torch")
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    seen, adaptation_ids = 0, []
    for batch in loader:
        assert batch["albat_id"].dtype == torch.int64 and batch["id"].dtype == torch.int64  # never float
        assert batch["albat_weight"].is_floating_point() and batch["albat_is_adaptation"].dtype == torch.bool
        assert all(isinstance(t, str) and t for t in batch["title"])
        seen += len(batch["albat_id"])
        adaptation_ids += batch["id"][batch["albat_is_adaptation"]].tolist()
    assert seen == BUDGET + len(records)
    assert sorted(adaptation_ids) == sorted(r["id"] for r in records)


def test_shards_read_back_with_pandas_keep_integer_ids(columns_run) -> None:
    pd = pytest.importorskip("pandas")
    work, records = columns_run
    frame = pd.concat([pd.read_parquet(f) for f in _shards(work)], ignore_index=True)
    assert str(frame["albat_id"].dtype) == "int64" and str(frame["id"].dtype) == "int64"
    adapt = frame[frame["albat_is_adaptation"]].sort_values("albat_query")
    assert adapt["title"].tolist() == [r["title"] for r in records]


@pytest.fixture(scope="module")
def extra_columns_run(small_wiki: SmallWiki, tiny_encoder: str, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The adaptation set has columns the backbone does not keep: a float, a list, a struct."""
    tmp = tmp_path_factory.mktemp("adaptation_extra_columns")
    records = [{**r, "difficulty": i / 4, "tags": [r["topic"], f"t{i}"], "meta": {"split": "dev", "n": i}}
               for i, r in enumerate(_adaptation_records(small_wiki))]
    config = _config(tmp, small_wiki.corpus, _jsonl(tmp / "adaptation.jsonl", records), tiny_encoder,
                     embed='keep_columns = ["title"]')
    assert albat("run", "--config", config, "--quiet") == 0
    return tmp / "work", records


def test_columns_only_the_adaptation_set_has_come_out_too(extra_columns_run) -> None:
    datasets = pytest.importorskip("datasets")
    work, records = extra_columns_run
    ds = datasets.load_dataset("parquet", data_files=_shards(work), split="train")
    names = ds.column_names
    assert names.index("title") < names.index("id") < names.index("albat_id")  # backbone's, then the set's, then albat's
    for column in ("id", "description", "topic", "difficulty", "tags", "meta"):
        assert column in names
    adapt = sorted((r for r in ds if r["albat_is_adaptation"]), key=lambda r: r["albat_query"])
    for column in ("id", "title", "text", "description", "difficulty", "tags", "meta"):
        assert [r[column] for r in adapt] == [rec[column] for rec in records], column
    backbone = [r for r in ds if not r["albat_is_adaptation"]]
    assert len(backbone) == BUDGET and all(r["tags"] is None and r["difficulty"] is None for r in backbone)
    assert all(isinstance(r["albat_id"], int) for r in ds)


# ----- chat rows ------------------------------------------------------------------------------------
def _chat(row: dict) -> list[dict]:
    return [{"role": "user", "content": f"Tell me about {row['title']}."}, {"role": "assistant", "content": row["text"]}]


@pytest.fixture(scope="module")
def chat_run(small_wiki: SmallWiki, tiny_encoder: str, tmp_path_factory) -> tuple[Path, list[dict], list[dict]]:
    """A chat backbone (every corpus article as a two-message conversation) and a chat adaptation set."""
    tmp = tmp_path_factory.mktemp("chat_rows")
    corpus = [{"id": r["id"], "topic": r["topic"], "messages": _chat(r)} for r in pq.read_table(small_wiki.corpus).to_pylist()]
    adaptation = [{"id": r["id"], "messages": _chat(r)} for r in _adaptation_records(small_wiki)]
    config = _config(tmp, _jsonl(tmp / "corpus.jsonl", corpus), _jsonl(tmp / "adaptation.jsonl", adaptation),
                     tiny_encoder, embed='text_column = "messages"\nid_column = "id"\nkeep_columns = ["topic"]',
                     query='text_column = "messages"')
    assert albat("run", "--config", config, "--quiet") == 0
    return tmp / "work", corpus, adaptation


def test_chat_rows_embed_the_rendering(chat_run, tiny_encoder: str) -> None:
    from albat.pipeline.encoders import TextEncoder

    work, corpus, _ = chat_run
    store = EmbeddingStore(work / "store")
    ids = np.array([r["id"] for r in corpus[:10]], np.int64)
    rendered = [render_one(r["messages"], "lines") for r in corpus[:10]]
    first = corpus[0]["messages"]
    assert rendered[0] == f"user: {first[0]['content']}\nassistant: {first[1]['content']}"
    assert store.texts_for_ids(ids) == rendered
    expected = TextEncoder(name=tiny_encoder, dtype="float32", backend="torch").encode(rendered)
    np.testing.assert_allclose(store.vectors_for_ids(ids), expected, atol=1e-5)
    assert store.info["chat_template"] == "lines"


def test_chat_structure_comes_out_in_the_shards(chat_run) -> None:
    datasets = pytest.importorskip("datasets")
    work, corpus, adaptation = chat_run
    ds = datasets.load_dataset("parquet", data_files=_shards(work), split="train")
    by_id = {r["id"]: r["messages"] for r in corpus}
    adapt = sorted((r for r in ds if r["albat_is_adaptation"]), key=lambda r: r["albat_query"])
    assert [r["messages"] for r in adapt] == [a["messages"] for a in adaptation]
    assert [r["id"] for r in adapt] == [a["id"] for a in adaptation]
    backbone = [r for r in ds if not r["albat_is_adaptation"]]
    assert len(backbone) == BUDGET and all(r["messages"] == by_id[r["id"]] for r in backbone)
    assert "text" not in ds.column_names  # no column invented: the chat column is the text column


def test_chat_adaptation_over_a_plain_backbone(small_wiki: SmallWiki, tiny_encoder: str, tmp_path: Path) -> None:
    """Plain corpus, chat adaptation set: the backbone's text column gets the rendering (so one of the
    corpus rows holding exactly that text is blocked as an exact duplicate) and `messages` keeps
    the structure; `--chat-template content` is what both sides render with."""
    records = _adaptation_records(small_wiki)[:4]
    adaptation = [{"messages": _chat(r), "title": r["title"]} for r in records]
    corpus_rows = pq.read_table(small_wiki.corpus).to_pylist()
    planted = {**corpus_rows[0], "id": 10_000_000, "text": render_one(adaptation[0]["messages"], "content")}
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(corpus_rows + [planted]), corpus)
    config = _config(tmp_path, corpus, _jsonl(tmp_path / "adaptation.jsonl", adaptation), tiny_encoder,
                     embed='id_column = "id"\nkeep_columns = ["title"]\nchat_template = "content"',
                     query='text_column = "messages"')
    assert albat("run", "--config", config, "--quiet") == 0
    blocked = pq.read_table(tmp_path / "work" / "tasks/default/query" / "blocked.parquet").to_pylist()
    assert any(b["id"] == planted["id"] and b["reason"].startswith("exact duplicate of adaptation example 0")
               for b in blocked)
    table = pa.concat_tables(pq.read_table(f) for f in _shards(tmp_path / "work"))
    adapt = table.filter(table.column("albat_is_adaptation")).sort_by("albat_query")
    assert adapt.column("text").to_pylist() == [render_one(a["messages"], "content") for a in adaptation]
    assert adapt.column("messages").to_pylist() == [a["messages"] for a in adaptation]
    assert adapt.column("title").to_pylist() == [r["title"] for r in records]


def test_render_templates() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": None}, {"role": "user", "content": "Bye."}]
    assert render_one(messages, "lines") == "system: Be brief.\nuser: Hi?\nassistant: \nuser: Bye."
    assert render_one(messages, "content") == "Be brief.\nHi?\n\nBye."
    assert render_one(messages, "user") == "Hi?\nBye."
    assert render_one(None, "lines") is None
    with pytest.raises(ValueError, match="unknown chat template"):
        render_one(messages, "jinja")


# ----- the formats through the whole pipeline ---------------------------------------------------------
def test_whole_run_from_a_memory_url_corpus_and_a_csv_adaptation_set(small_wiki: SmallWiki, tiny_encoder: str,
                                                                    tmp_path: Path) -> None:
    """Corpus as zstd JSONL and CSV at memory:// URLs, adaptation set as gzip CSV: the run completes,
    its ids are the stream positions a local plain copy gets, and a second run skips every stage."""
    import csv
    import gzip
    import io
    import uuid

    import fsspec

    rows = pq.read_table(small_wiki.corpus, columns=["title", "text", "topic"]).to_pylist()
    root = f"memory://albat-run-{uuid.uuid4().hex[:8]}"
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write("".join(json.dumps(r) + "\n" for r in rows[:150]).encode())
    with fsspec.open(f"{root}/a.jsonl.zst", "wb") as fh:
        fh.write(sink.getvalue().to_pybytes())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["title", "text", "topic"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[150:])
    with fsspec.open(f"{root}/b.csv", "wb") as fh:
        fh.write(text.getvalue().encode())
    records = _adaptation_records(small_wiki)[:5]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["title", "text"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({"title": r["title"], "text": r["text"]} for r in records)
    adaptation = tmp_path / "adaptation.csv.gz"
    adaptation.write_bytes(gzip.compress(text.getvalue().encode()))
    config = _config(tmp_path, root, adaptation, tiny_encoder, embed='keep_columns = ["title"]')
    assert albat("run", "--config", config, "--quiet") == 0
    store = EmbeddingStore(tmp_path / "work" / "store")
    assert store.info["rows"] == len(rows) and [f[2] for f in store.info["files"]] == [150, len(rows) - 150]
    assert store.texts_for_ids(np.arange(len(rows), dtype=np.int64)) == [r["text"] for r in rows]
    positions = np.array([len(rows) - 1, 0, 151, 149])  # across both shards, out of order
    assert store.texts_at(positions) == [rows[int(i)]["text"] for i in store.ids_at(positions)]
    assert store.texts_at(positions, "title") == [rows[int(i)]["title"] for i in store.ids_at(positions)]
    table = pa.concat_tables(pq.read_table(f) for f in _shards(tmp_path / "work"))
    adapt = table.filter(table.column("albat_is_adaptation")).sort_by("albat_query")
    assert adapt.column("title").to_pylist() == [r["title"] for r in records]
    assert set(adapt.column("albat_source").to_pylist()) == {"../adaptation.csv.gz"}  # relative to the work directory
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("*") if p.is_file()}
    assert albat("run", "--config", config, "--quiet") == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("*") if p.is_file()} == before
