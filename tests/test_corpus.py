"""albat.stores.corpus: the four readers, their validation errors, file expansion and batch bounds.

Expectations are computed independently (pyarrow / json / plain Python reads of the same files),
never copied from a run of the reader.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from albat.stores.corpus import CorpusSpec, count_rows, iter_batches, read_all, resolve_files
from albat.stores.errors import AlbatError


# ----- helpers --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wiki_rows(small_wiki) -> list[dict]:
    """A dozen real articles (id, title, text) read straight from the fixture's Parquet file."""
    rows = pq.read_table(small_wiki.corpus, columns=["id", "title", "text"]).slice(0, 12).to_pylist()
    assert len(rows) == 12 and all(r["text"].strip() for r in rows)
    return rows


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _collect(spec: CorpusSpec, batch_rows: int = 4096):
    batches = list(iter_batches(spec, batch_rows=batch_rows))
    table = pa.concat_tables([b.table for b in batches]) if batches else None
    sources = [b.source for b in batches for _ in range(b.table.num_rows)]
    rows = [r for b in batches for r in b.rows.to_pylist()]
    return batches, table, sources, rows


def _error(spec: CorpusSpec, batch_rows: int = 4096) -> str:
    with pytest.raises(AlbatError) as info:
        list(iter_batches(spec, batch_rows=batch_rows))
    return str(info.value)


# ----- the four readers -----------------------------------------------------------------------
def test_parquet_reader_yields_text_ids_kept_columns_source_and_rows(tmp_path, wiki_rows):
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(wiki_rows), path)
    spec = CorpusSpec(paths=[str(path)], id_column="id", keep_columns=["title"])
    batches, table, sources, rows = _collect(spec, batch_rows=5)
    assert table.column_names == ["text", "id", "title"]  # spec order, not file order
    assert table.column("text").to_pylist() == [r["text"] for r in wiki_rows]
    assert table.column("id").to_pylist() == [r["id"] for r in wiki_rows]
    assert table.column("title").to_pylist() == [r["title"] for r in wiki_rows]
    assert sources == [str(path)] * len(wiki_rows)
    assert rows == list(range(len(wiki_rows)))
    assert all(b.table.num_rows <= 5 for b in batches)


def test_parquet_reader_on_the_small_wiki_fixture(small_wiki):
    expected = pq.read_table(small_wiki.corpus)
    table, sources, rows = read_all(CorpusSpec(paths=[str(small_wiki.corpus)], id_column="id"))
    assert table.num_rows == small_wiki.rows == expected.num_rows
    assert table.column("text").to_pylist() == expected.column("text").to_pylist()
    assert table.column("id").to_pylist() == expected.column("id").to_pylist()
    assert rows == list(range(expected.num_rows))
    assert set(sources) == {str(small_wiki.corpus)}
    assert count_rows(CorpusSpec(paths=[str(small_wiki.corpus)])) == expected.num_rows


def test_jsonl_reader_on_the_adaptation_fixture(small_wiki):
    records = [json.loads(line) for line in small_wiki.adaptation.read_text().splitlines() if line.strip()]
    spec = CorpusSpec(paths=[str(small_wiki.adaptation)], id_column="id", keep_columns=["topic"])
    _, table, sources, rows = _collect(spec, batch_rows=3)
    assert table.column("text").to_pylist() == [r["text"] for r in records]
    assert table.column("id").to_pylist() == [r["id"] for r in records]
    assert table.column("topic").to_pylist() == [r["topic"] for r in records]
    assert sources == [str(small_wiki.adaptation)] * len(records)
    assert rows == list(range(len(records)))


def test_jsonl_blank_lines_are_skipped_and_row_numbers_count_records(tmp_path, wiki_rows):
    path = tmp_path / "gaps.jsonl"
    a, b = wiki_rows[0], wiki_rows[1]
    path.write_text(json.dumps(a) + "\n\n   \n" + json.dumps(b) + "\n")
    table, _, rows = read_all(CorpusSpec(paths=[str(path)], id_column="id"))
    assert table.column("id").to_pylist() == [a["id"], b["id"]]
    assert rows == [0, 1]


def test_txt_reader_one_example_a_line(tmp_path, wiki_rows):
    texts = [_one_line(r["text"]) for r in wiki_rows]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    batches, table, sources, rows = _collect(CorpusSpec(paths=[str(path)]), batch_rows=5)
    assert table.column_names == ["text"]
    assert table.column("text").to_pylist() == texts
    assert sources == [str(path)] * len(texts)
    assert rows == list(range(len(texts)))
    assert [b.table.num_rows for b in batches] == [5, 5, 2]


def test_txt_reader_strips_crlf_and_handles_missing_final_newline(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes("first line\r\nsecond line\r\nno newline at end".encode())
    table, _, rows = read_all(CorpusSpec(paths=[str(path)]))
    assert table.column("text").to_pylist() == ["first line", "second line", "no newline at end"]
    assert rows == [0, 1, 2]


def test_txt_reader_refuses_extra_columns(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("hello\n")
    msg = _error(CorpusSpec(paths=[str(path)], id_column="id"))
    assert str(path) in msg and "--id-column" in msg


def test_hf_saved_dataset_directory(tmp_path, wiki_rows):
    datasets = pytest.importorskip("datasets")
    target = tmp_path / "hf_corpus"
    datasets.Dataset.from_dict({
        "text": [r["text"] for r in wiki_rows],
        "doc_id": [r["id"] for r in wiki_rows],
        "title": [r["title"] for r in wiki_rows],
    }).save_to_disk(str(target))
    spec = CorpusSpec(paths=[str(target)], id_column="doc_id", keep_columns=["title"])
    assert resolve_files(spec) == [(str(target), "hf")]
    batches, table, sources, rows = _collect(spec, batch_rows=5)
    assert table.column_names == ["text", "doc_id", "title"]
    assert table.column("text").to_pylist() == [r["text"] for r in wiki_rows]
    assert table.column("doc_id").to_pylist() == [r["id"] for r in wiki_rows]
    assert table.column("title").to_pylist() == [r["title"] for r in wiki_rows]
    assert sources == [str(target)] * len(wiki_rows)
    assert rows == list(range(len(wiki_rows)))
    assert all(b.table.num_rows <= 5 for b in batches)
    assert count_rows(spec) == len(wiki_rows)


def test_hf_dataset_missing_column_names_the_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    target = tmp_path / "hf_body"
    datasets.Dataset.from_dict({"body": ["some text"]}).save_to_disk(str(target))
    msg = _error(CorpusSpec(paths=[str(target)]))
    assert str(target) in msg and "'text'" in msg and "body" in msg and "--text-column" in msg


def test_hf_dataset_dict_directory_asks_for_a_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    target = tmp_path / "hf_dict"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["a training example"]}),
        "test": datasets.Dataset.from_dict({"text": ["a test example"]}),
    }).save_to_disk(str(target))
    msg = _error(CorpusSpec(paths=[str(target)]))
    assert str(target) in msg
    assert "train" in msg and "test" in msg
    assert "SPLIT" in msg


def test_hf_split_subdirectory_of_a_dataset_dict_reads(tmp_path):
    datasets = pytest.importorskip("datasets")
    target = tmp_path / "hf_dict"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["alpha", "beta"]}),
        "test": datasets.Dataset.from_dict({"text": ["gamma"]}),
    }).save_to_disk(str(target))
    table, _, rows = read_all(CorpusSpec(paths=[str(target / "train")]))
    assert table.column("text").to_pylist() == ["alpha", "beta"]
    assert rows == [0, 1]


# ----- validation errors ----------------------------------------------------------------------
def test_missing_text_column_names_file_column_and_flag(tmp_path, wiki_rows):
    path = tmp_path / "nobody.parquet"
    pq.write_table(pa.table({"body": [r["text"] for r in wiki_rows[:3]]}), path)
    msg = _error(CorpusSpec(paths=[str(path)]))
    assert str(path) in msg
    assert "'text'" in msg
    assert "body" in msg  # lists the columns it does have
    assert "--text-column" in msg


def test_missing_id_column_names_the_id_flag(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["one"]}), path)
    msg = _error(CorpusSpec(paths=[str(path)], id_column="doc_id"))
    assert str(path) in msg and "'doc_id'" in msg and "--id-column" in msg


def test_missing_keep_column_names_the_keep_flag(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["one"]}), path)
    msg = _error(CorpusSpec(paths=[str(path)], keep_columns=["lang"]))
    assert str(path) in msg and "'lang'" in msg and "--keep-columns" in msg


def test_jsonl_missing_text_column_names_the_line(tmp_path):
    path = _write_jsonl(tmp_path / "c.jsonl", [{"body": "x"}])
    msg = _error(CorpusSpec(paths=[str(path)]))
    assert str(path) in msg and "line 1" in msg and "'text'" in msg and "--text-column" in msg


def test_text_column_that_is_not_a_string(tmp_path):
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), path)
    msg = _error(CorpusSpec(paths=[str(path)]))
    assert str(path) in msg and "'text'" in msg and "not text" in msg and "--text-column" in msg


def test_null_text_names_file_row_column_and_flag(tmp_path, wiki_rows):
    path = tmp_path / "nulls.parquet"
    texts = [wiki_rows[0]["text"], wiki_rows[1]["text"], None, wiki_rows[3]["text"]]
    pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), path)
    msg = _error(CorpusSpec(paths=[str(path)]))
    assert str(path) in msg
    assert "row 2" in msg
    assert "null" in msg
    assert "'text'" in msg
    assert "--skip-empty" in msg


def test_null_text_row_number_counts_across_batches(tmp_path):
    path = _write_jsonl(tmp_path / "late_null.jsonl", [{"text": f"example {i}"} for i in range(7)] + [{"text": None}])
    msg = _error(CorpusSpec(paths=[str(path)]), batch_rows=3)
    assert str(path) in msg and "row 7" in msg and "null" in msg and "--skip-empty" in msg


def test_all_null_jsonl_batch_is_reported_as_null(tmp_path):
    path = _write_jsonl(tmp_path / "all_null.jsonl", [{"text": None}, {"text": None}])
    msg = _error(CorpusSpec(paths=[str(path)]))
    assert str(path) in msg and "row 0" in msg and "null" in msg and "--skip-empty" in msg


@pytest.mark.parametrize("blank", ["", "   ", "\t \u00a0"])
def test_empty_or_whitespace_text_names_file_row_column_and_flag(tmp_path, wiki_rows, blank):
    path = tmp_path / "blank.parquet"
    texts = [wiki_rows[0]["text"], blank, wiki_rows[2]["text"]]
    pq.write_table(pa.table({"text": texts}), path)
    msg = _error(CorpusSpec(paths=[str(path)]))
    assert str(path) in msg
    assert "row 1" in msg
    assert "empty" in msg
    assert "'text'" in msg
    assert "--skip-empty" in msg


def test_empty_line_in_txt_is_an_error_by_default(tmp_path):
    path = tmp_path / "gap.txt"
    path.write_text("first\n\nthird\n")
    msg = _error(CorpusSpec(paths=[str(path)]))
    assert str(path) in msg and "row 1" in msg and "empty" in msg and "--skip-empty" in msg


def test_skip_empty_drops_rows_but_keeps_original_row_numbers(tmp_path, wiki_rows):
    texts = [wiki_rows[0]["text"], "", wiki_rows[1]["text"], None, "  \n ", wiki_rows[2]["text"], None]
    ids = [10, 11, 12, 13, 14, 15, 16]
    path = tmp_path / "holes.parquet"
    pq.write_table(pa.table({"text": pa.array(texts, pa.string()), "id": ids}), path)
    spec = CorpusSpec(paths=[str(path)], id_column="id", skip_empty=True)
    batches, table, sources, rows = _collect(spec, batch_rows=2)
    keep = [i for i, t in enumerate(texts) if t is not None and t.strip()]
    assert keep == [0, 2, 5]  # by hand
    assert table.column("text").to_pylist() == [texts[i] for i in keep]
    assert table.column("id").to_pylist() == [ids[i] for i in keep]
    assert rows == keep
    assert all(b.table.num_rows > 0 for b in batches)  # fully-empty batches are not yielded


def test_skip_empty_in_txt_keeps_line_numbers(tmp_path):
    path = tmp_path / "gaps.txt"
    path.write_text("alpha\n\n  \nbeta\n")
    table, _, rows = read_all(CorpusSpec(paths=[str(path)], skip_empty=True))
    assert table.column("text").to_pylist() == ["alpha", "beta"]
    assert rows == [0, 3]


def test_skip_empty_file_with_only_empty_rows_yields_nothing(tmp_path):
    path = tmp_path / "hollow.parquet"
    pq.write_table(pa.table({"text": ["", " "]}), path)
    assert list(iter_batches(CorpusSpec(paths=[str(path)], skip_empty=True))) == []


def test_truncated_parquet_is_reported_with_file_and_fix(tmp_path, wiki_rows):
    path = tmp_path / "cut.parquet"
    pq.write_table(pa.Table.from_pylist(wiki_rows), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    msg = _error(CorpusSpec(paths=[str(path)]))
    assert str(path) in msg
    assert "not a readable Parquet file" in msg
    assert "re-export or remove it" in msg


def test_non_integer_id_column(tmp_path, wiki_rows):
    path = tmp_path / "str_ids.parquet"
    pq.write_table(pa.table({"text": [r["text"] for r in wiki_rows[:3]], "id": ["a", "b", "c"]}), path)
    msg = _error(CorpusSpec(paths=[str(path)], id_column="id"))
    assert str(path) in msg and "'id'" in msg and "not integers" in msg and "--id-column" in msg


def test_float_id_column_is_not_integer(tmp_path):
    path = _write_jsonl(tmp_path / "float_ids.jsonl", [{"text": "a", "id": 1.5}, {"text": "b", "id": 2.5}])
    msg = _error(CorpusSpec(paths=[str(path)], id_column="id"))
    assert str(path) in msg and "not integers" in msg and "--id-column" in msg


def test_null_id_names_file_and_row(tmp_path, wiki_rows):
    path = tmp_path / "null_id.parquet"
    pq.write_table(pa.table({"text": [r["text"] for r in wiki_rows[:4]],
                             "id": pa.array([1, 2, None, 4], pa.int64())}), path)
    msg = _error(CorpusSpec(paths=[str(path)], id_column="id"))
    assert str(path) in msg and "row 2" in msg and "null id" in msg and "'id'" in msg


def test_null_id_row_number_survives_skip_empty(tmp_path):
    path = tmp_path / "null_id2.parquet"
    pq.write_table(pa.table({"text": ["", "b", "c"], "id": pa.array([1, 2, None], pa.int64())}), path)
    msg = _error(CorpusSpec(paths=[str(path)], id_column="id", skip_empty=True))
    assert "row 2" in msg and "null id" in msg  # row 2 of the file, not of the filtered table


def test_null_id_alone_in_the_last_jsonl_batch_names_the_row(tmp_path):
    path = _write_jsonl(tmp_path / "late_null_id.jsonl",
                        [{"text": "a", "id": 1}, {"text": "b", "id": 2}, {"text": "c", "id": None}])
    msg = _error(CorpusSpec(paths=[str(path)], id_column="id"), batch_rows=2)
    assert "row 2" in msg and "null id" in msg


def test_invalid_json_line_names_the_line_number(tmp_path, wiki_rows):
    path = tmp_path / "broken.jsonl"
    lines = [json.dumps({"text": wiki_rows[0]["text"]}), json.dumps({"text": wiki_rows[1]["text"]}),
             '{"text": "unterminated', json.dumps({"text": wiki_rows[2]["text"]})]
    path.write_text("\n".join(lines) + "\n")
    msg = _error(CorpusSpec(paths=[str(path)]))
    assert str(path) in msg
    assert "line 3" in msg
    assert "invalid JSON" in msg
    assert "fix or remove the line" in msg


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "array.jsonl"
    path.write_text('{"text": "ok"}\n["not", "an", "object"]\n')
    msg = _error(CorpusSpec(paths=[str(path)]))
    assert str(path) in msg and "line 2" in msg and "JSON object" in msg


def test_jsonl_inconsistent_types_is_an_albat_error(tmp_path):
    path = _write_jsonl(tmp_path / "mixed.jsonl", [{"text": "a", "id": 1}, {"text": "b", "id": "two"}])
    msg = _error(CorpusSpec(paths=[str(path)], id_column="id"))
    assert str(path) in msg and "one type" in msg


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_non_utf8_bytes_name_file_and_line(tmp_path, suffix):
    path = tmp_path / f"latin1{suffix}"
    good = b'{"text": "fine"}\n' if suffix == ".jsonl" else b"fine\n"
    bad = '{"text": "caf\u00e9"}\n'.encode("latin-1") if suffix == ".jsonl" else "caf\u00e9\n".encode("latin-1")
    path.write_bytes(good + good + bad)
    msg = _error(CorpusSpec(paths=[str(path)]))
    assert str(path) in msg
    assert "line 3" in msg
    assert "UTF-8" in msg


def test_empty_jsonl_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    msg = _error(CorpusSpec(paths=[str(path)]))
    assert str(path) in msg and "holds no rows" in msg and "remove the file" in msg


def test_jsonl_of_blank_lines_is_empty(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text("\n  \n\n")
    msg = _error(CorpusSpec(paths=[str(path)]))
    assert str(path) in msg and "holds no rows" in msg


def test_parquet_with_zero_rows(tmp_path):
    path = tmp_path / "zero.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    msg = _error(CorpusSpec(paths=[str(path)]))
    assert str(path) in msg and "holds no rows" in msg


def test_zero_byte_parquet(tmp_path):
    path = tmp_path / "zero_bytes.parquet"
    path.write_bytes(b"")
    msg = _error(CorpusSpec(paths=[str(path)]))
    assert str(path) in msg and "not a readable Parquet file" in msg


def test_empty_file_in_a_glob_is_reported_after_the_good_file(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", [{"text": "first file"}])
    (tmp_path / "b.jsonl").write_bytes(b"")
    spec = CorpusSpec(paths=[str(tmp_path / "*.jsonl")])
    it = iter_batches(spec)
    first = next(it)
    assert first.source == str(tmp_path / "a.jsonl")
    with pytest.raises(AlbatError, match="b.jsonl: holds no rows"):
        next(it)


# ----- input expansion ------------------------------------------------------------------------
def test_directory_expands_recursively_in_sorted_order(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    _write_jsonl(root / "b.jsonl", [{"text": "from b"}])
    _write_jsonl(root / "a.jsonl", [{"text": "from a 0"}, {"text": "from a 1"}])
    (root / "sub" / "c.txt").write_text("from c\n")
    pq.write_table(pa.table({"text": ["from p"]}), root / "sub" / "p.parquet")
    _write_jsonl(root / ".hidden.jsonl", [{"text": "hidden"}])
    (root / "README.md").write_text("not data")
    spec = CorpusSpec(paths=[str(root)])
    expected = [(str(root / "a.jsonl"), "jsonl"), (str(root / "b.jsonl"), "jsonl"),
                (str(root / "sub" / "c.txt"), "txt"), (str(root / "sub" / "p.parquet"), "parquet")]
    assert resolve_files(spec) == expected
    table, sources, rows = read_all(spec)
    assert table.column("text").to_pylist() == ["from a 0", "from a 1", "from b", "from c", "from p"]
    assert sources == [str(root / "a.jsonl")] * 2 + [str(root / "b.jsonl"), str(root / "sub" / "c.txt"),
                                                    str(root / "sub" / "p.parquet")]
    assert rows == [0, 1, 0, 0, 0]  # row numbers restart in each file


def test_directory_expansion_skips_hidden_directories(tmp_path):
    root = tmp_path / "corpus"
    (root / ".ipynb_checkpoints").mkdir(parents=True)
    _write_jsonl(root / "a.jsonl", [{"text": "real"}])
    _write_jsonl(root / ".ipynb_checkpoints" / "a-checkpoint.jsonl", [{"text": "stale copy"}])
    assert resolve_files(CorpusSpec(paths=[str(root)])) == [(str(root / "a.jsonl"), "jsonl")]


def test_directory_expansion_does_not_read_hf_metadata_as_jsonl(tmp_path):
    datasets = pytest.importorskip("datasets")
    root = tmp_path / "corpus"
    root.mkdir()
    _write_jsonl(root / "a.jsonl", [{"text": "from jsonl"}])
    datasets.Dataset.from_dict({"text": ["from hf"]}).save_to_disk(str(root / "hf"))
    resolved = resolve_files(CorpusSpec(paths=[str(root)]))
    assert (str(root / "a.jsonl"), "jsonl") in resolved
    assert not [p for p, fmt in resolved if fmt == "jsonl" and (root / "hf") in Path(p).parents]


def test_glob_expands_in_sorted_order(tmp_path):
    names = ["part-10.jsonl", "part-02.jsonl", "part-01.jsonl", "other.txt"]
    for name in names:
        if name.endswith(".jsonl"):
            _write_jsonl(tmp_path / name, [{"text": name}])
        else:
            (tmp_path / name).write_text(name + "\n")
    spec = CorpusSpec(paths=[str(tmp_path / "part-*.jsonl")])
    assert [Path(p).name for p, _ in resolve_files(spec)] == ["part-01.jsonl", "part-02.jsonl", "part-10.jsonl"]
    table, sources, _ = read_all(spec)
    assert table.column("text").to_pylist() == ["part-01.jsonl", "part-02.jsonl", "part-10.jsonl"]


def test_glob_with_no_match_and_missing_path(tmp_path):
    with pytest.raises(AlbatError, match="no such file or directory"):
        resolve_files(CorpusSpec(paths=[str(tmp_path / "*.parquet")]))
    missing = tmp_path / "nope.parquet"
    with pytest.raises(AlbatError) as info:
        resolve_files(CorpusSpec(paths=[str(missing)]))
    assert str(missing) in str(info.value)


def test_directory_without_data_files(tmp_path):
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(AlbatError, match="holds no .parquet, .jsonl, .csv, .tsv or .txt files"):
        resolve_files(CorpusSpec(paths=[str(tmp_path)]))


def test_unknown_suffix_asks_for_format_and_format_overrides_suffix(tmp_path):
    path = tmp_path / "corpus.data"
    path.write_text('{"text": "hello"}\n')
    with pytest.raises(AlbatError, match="--format"):
        resolve_files(CorpusSpec(paths=[str(path)]))
    table, _, _ = read_all(CorpusSpec(paths=[str(path)], format="jsonl"))
    assert table.column("text").to_pylist() == ["hello"]


def test_unknown_format_and_no_input():
    with pytest.raises(AlbatError, match="unknown corpus format 'xml'"):
        resolve_files(CorpusSpec(paths=["x"], format="xml"))
    with pytest.raises(AlbatError, match="--input"):
        resolve_files(CorpusSpec(paths=[]))


# ----- batch size -----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "txt"])
@pytest.mark.parametrize("batch_rows", [1, 3, 10, 100])
def test_batch_size_bounds_batch_rows(tmp_path, wiki_rows, fmt, batch_rows):
    texts = [_one_line(r["text"]) for r in wiki_rows[:10]]
    path = tmp_path / f"c.{fmt}"
    if fmt == "parquet":
        # several small row groups, so batches can be cut at row-group boundaries too
        pq.write_table(pa.table({"text": texts}), path, row_group_size=4)
    elif fmt == "jsonl":
        _write_jsonl(path, [{"text": t} for t in texts])
    else:
        path.write_text("\n".join(texts) + "\n")
    batches = list(iter_batches(CorpusSpec(paths=[str(path)]), batch_rows=batch_rows))
    sizes = [b.table.num_rows for b in batches]
    assert all(0 < s <= batch_rows for s in sizes)
    assert sum(sizes) == 10
    assert len(batches) >= -(-10 // batch_rows)  # at least ceil(10 / batch_rows) batches
    assert [r for b in batches for r in b.rows.to_pylist()] == list(range(10))
    assert [t for b in batches for t in b.table.column("text").to_pylist()] == texts
    if fmt != "parquet":
        full, rest = divmod(10, batch_rows)
        assert sizes == [batch_rows] * full + ([rest] if rest else [])


def test_read_all_limit_rows(tmp_path):
    path = _write_jsonl(tmp_path / "many.jsonl", [{"text": f"example {i}"} for i in range(5)])
    table, _, _ = read_all(CorpusSpec(paths=[str(path)]), limit_rows=5)
    assert table.num_rows == 5
    with pytest.raises(AlbatError, match="more than 4 examples"):
        read_all(CorpusSpec(paths=[str(path)]), limit_rows=4)
