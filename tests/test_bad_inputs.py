"""The bad-input corpus: every case gets exit status 2, one line on stderr naming the input and the
fix, and a work directory left exactly as it was (names, sizes and mtimes of every file and folder;
a work directory that did not exist still does not).

Each case is a function that prepares its inputs under its own tmp directory and returns the
command, the strings the error must contain (the input, then the fix) and the work directory to
watch. Cases on a finished work directory run on a copy of one built once for the module.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SmallWiki, albat, finished_small_run, make_tiny_encoder

from albat.stores.workdir import Workdir


@dataclass
class Case:
    argv: list[object]
    names: list[str]  # the input the error must name
    fix: str  # and the fix it must suggest
    work: Path
    during: Callable[[], object] = field(default=lambda: None)  # takes a resource for the command's run
    release: Callable[[], object] = field(default=lambda: None)  # and gives it back


@dataclass
class Ctx:
    tmp: Path
    wiki: SmallWiki
    encoder: str
    built: Path  # a finished work directory (read-only: cases copy it)
    config: Path  # its config
    encoders: dict[str, str]  # "dim48": another dimension, "seed1": same shape, other weights

    @property
    def fresh(self) -> Path:
        return self.tmp / "w"  # does not exist

    def copy(self) -> Path:
        shutil.copytree(self.built, self.tmp / "w", symlinks=True)
        return self.tmp / "w"

    def rows(self, n: int = 30) -> list[dict]:
        return pq.read_table(self.wiki.corpus).to_pylist()[:n]

    def parquet(self, rows: list[dict], name: str = "corpus.parquet", schema: pa.Schema | None = None) -> Path:
        path = self.tmp / name
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
        return path

    def corpus_with(self, row: int, column: str, value: object) -> Path:
        """The first 30 corpus rows as Parquet, with one cell changed."""
        rows = self.rows()
        rows[row][column] = value
        return self.parquet(rows)

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.tmp / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def embed(self, *inputs: object, extra: tuple = ()) -> list[object]:
        return ["embed", "--work", self.fresh, "--input", *inputs, "--encoder", self.encoder, "--shard-rows", 64,
                *extra, "--quiet"]

    def on_built(self, stage: str, *extra: object) -> list[object]:
        return [stage, "--config", self.config, "--work", self.copy(), *extra, "--quiet"]

    def config_file(self, text: str) -> Path:
        return self.file("bad.toml", text)

    def store_then_swap_encoder(self, replacement: str) -> tuple[Path, list[object]]:
        """Embed and index a small store with a private copy of the tiny encoder, then put another
        model at that path; returns the encoder path and the query command."""
        from albat.pipeline.encoder_backends import load_backend

        encoder, work = self.tmp / "encoder", self.tmp / "w"
        shutil.copytree(self.encoder, encoder)
        assert albat("embed", "--work", work, "--input", self.parquet(self.rows(40), "small.parquet"),
                     "--encoder", encoder, "--quiet") == 0
        assert albat("index", "--work", work, "--quiet") == 0
        shutil.rmtree(encoder)
        shutil.copytree(self.encoders[replacement], encoder)
        load_backend.cache_clear()  # as a new process would, load what is at the path now
        return encoder, ["query", "--work", work, "--adaptation", self.wiki.adaptation, "--quiet"]


# ----- the corpus ---------------------------------------------------------------------------------
def empty_parquet(c: Ctx) -> Case:
    path = c.parquet([], schema=pa.schema([("id", pa.int64()), ("text", pa.string())]))
    return Case(c.embed(path), [str(path), "holds no rows"], "add rows or remove the file", c.fresh)


def empty_jsonl(c: Ctx) -> Case:
    path = c.file("corpus.jsonl", b"")
    return Case(c.embed(path), [str(path), "holds no rows"], "add rows or remove the file", c.fresh)


def empty_text_file(c: Ctx) -> Case:
    path = c.file("corpus.txt", b"")
    return Case(c.embed(path), [str(path), "holds no rows"], "add rows or remove the file", c.fresh)


def wrong_text_column(c: Ctx) -> Case:
    path = c.parquet(c.rows())
    return Case(c.embed(path, extra=("--text-column", "body")), [str(path), "'body'"], "pass --text-column", c.fresh)


def wrong_id_column(c: Ctx) -> Case:
    path = c.parquet(c.rows())
    return Case(c.embed(path, extra=("--id-column", "doc_id")), [str(path), "'doc_id'"], "pass --id-column", c.fresh)


def wrong_keep_column(c: Ctx) -> Case:
    path = c.parquet(c.rows())
    return Case(c.embed(path, extra=("--keep-columns", "title,year")), [str(path), "'year'"], "pass --keep-columns",
                c.fresh)


def text_column_not_text(c: Ctx) -> Case:
    path = c.parquet(c.rows())
    return Case(c.embed(path, extra=("--text-column", "id")), [str(path), "'id' holds int64"],
                "pass --text-column naming a string column", c.fresh)


def null_text(c: Ctx) -> Case:
    path = c.corpus_with(17, "text", None)
    return Case(c.embed(path), [f"{path} row 17", "null text"], "--skip-empty", c.fresh)


def empty_text(c: Ctx) -> Case:
    path = c.corpus_with(5, "text", " \t ")
    return Case(c.embed(path), [f"{path} row 5", "empty text"], "--skip-empty", c.fresh)


def null_text_in_a_later_shard(c: Ctx) -> Case:
    """Found by the read-through before the first shard is written, not after 15 shards (embed reads
    512 rows at a time)."""
    rows = [{**r, "id": i} for i, r in enumerate(c.rows(250) * 5)]
    rows[1000]["text"] = None
    path = c.parquet(rows)
    return Case(c.embed(path), [f"{path} row 1000", "null text"], "--skip-empty", c.fresh)


def non_utf8_jsonl(c: Ctx) -> Case:
    path = c.file("corpus.jsonl", b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    return Case(c.embed(path), [f"{path} line 2", "not valid UTF-8"], "re-encode the file as UTF-8", c.fresh)


def non_utf8_text_file(c: Ctx) -> Case:
    path = c.file("corpus.txt", b"one line\n\xff\xfe broken\n")
    return Case(c.embed(path), [f"{path} line 2", "not valid UTF-8"], "re-encode the file as UTF-8", c.fresh)


def ten_megabyte_document(c: Ctx) -> Case:
    path = c.corpus_with(9, "text", "lorem ipsum " * (10 * 1024 * 1024 // 12 + 1))
    return Case(c.embed(path), [f"{path} row 9", "over the 1,048,576-byte limit"], "--max-text-bytes", c.fresh)


def duplicated_ids_across_files(c: Ctx) -> Case:
    rows = c.rows(40)
    first, second = c.parquet(rows[:20], "a.parquet"), c.parquet(rows[20:] + [rows[3]], "b.parquet")
    return Case(c.embed(first, second, extra=("--id-column", "id")),
                [f"id {rows[3]['id']} appears 2 times", f"{first} row 3", f"{second} row 20"], "drop --id-column",
                c.fresh)


def truncated_parquet(c: Ctx) -> Case:
    data = c.wiki.corpus.read_bytes()
    path = c.file("truncated.parquet", data[: len(data) // 2])
    return Case(c.embed(path), [str(path), "not a readable Parquet file"], "re-export or remove it", c.fresh)


def ids_not_integers(c: Ctx) -> Case:
    rows = [{**r, "id": f"doc-{r['id']}"} for r in c.rows()]
    path = c.parquet(rows)
    return Case(c.embed(path, extra=("--id-column", "id")), [str(path), "holds string, not integers"],
                "pass an integer --id-column", c.fresh)


def null_id(c: Ctx) -> Case:
    path = c.corpus_with(4, "id", None)
    return Case(c.embed(path, extra=("--id-column", "id")), [f"{path} row 4", "null id"], "give every row an id",
                c.fresh)


def invalid_json_line(c: Ctx) -> Case:
    path = c.file("corpus.jsonl", '{"text": "ok"}\n{"text": "unterminated}\n')
    return Case(c.embed(path), [f"{path} line 2", "invalid JSON"], "fix or remove the line", c.fresh)


def json_line_not_an_object(c: Ctx) -> Case:
    path = c.file("corpus.jsonl", '["a", "list"]\n')
    return Case(c.embed(path), [f"{path} line 1", "expected a JSON object"], "object on each line", c.fresh)


def json_types_differ_across_rows(c: Ctx) -> Case:
    path = c.file("corpus.jsonl", '{"text": "a", "n": 1}\n{"text": "b", "n": "two"}\n')
    return Case(c.embed(path, extra=("--keep-columns", "n")), [str(path), "inconsistent value types"],
                "make each column one type", c.fresh)


def missing_input(c: Ctx) -> Case:
    path = c.tmp / "nowhere.parquet"
    return Case(c.embed(path), [str(path), "no such file"], "check the input path", c.fresh)


def unknown_suffix(c: Ctx) -> Case:
    path = c.file("corpus.xml", "<doc>hello</doc>\n")
    return Case(c.embed(path), [str(path), "cannot tell the format"], "pass --format", c.fresh)


def directory_without_corpus_files(c: Ctx) -> Case:
    (c.tmp / "docs").mkdir()
    (c.tmp / "docs" / "README.md").write_text("not a corpus")
    return Case(c.embed(c.tmp / "docs"), [str(c.tmp / "docs"), "holds no .parquet"], "point the input at the corpus",
                c.fresh)


def column_named_like_albat_metadata(c: Ctx) -> Case:
    path = c.parquet([{**r, "albat_id": 1} for r in c.rows()])
    return Case(c.embed(path, extra=("--keep-columns", "albat_id")), ["'albat_id'", "collides"],
                "rename it in the corpus", c.fresh)


def text_file_with_an_id_column(c: Ctx) -> Case:
    path = c.file("corpus.txt", "one\ntwo\n")
    return Case(c.embed(path, extra=("--id-column", "id")), [str(path), "a text file has one example a line"],
                "use Parquet/JSONL", c.fresh)


def corpus_changed_under_a_store(c: Ctx) -> Case:
    path = c.parquet(c.rows(50), "other.parquet")
    return Case(c.on_built("embed", "--input", path), ["store", "built from other inputs"], "pass --force", c.tmp / "w")


def force_with_a_truncated_corpus(c: Ctx) -> Case:
    """--force must not delete the old store before the new input has been read through."""
    data = c.wiki.corpus.read_bytes()
    path = c.file("truncated.parquet", data[: len(data) // 3])
    return Case(c.on_built("embed", "--input", path, "--force"), [str(path), "not a readable Parquet file"],
                "re-export or remove it", c.tmp / "w")


# ----- configs --------------------------------------------------------------------------------------
def config_unknown_key(c: Ctx) -> Case:
    config = c.config_file("[embed]\ntext_colum = 'body'\n")
    return Case(["run", "--config", config, "--work", c.fresh], [str(config), "unknown key 'embed.text_colum'"],
                "fix the spelling or remove it", c.fresh)


def config_invalid_toml(c: Ctx) -> Case:
    config = c.config_file("[embed\ninput = 'x'\n")
    return Case(["run", "--config", config, "--work", c.fresh], [str(config), "invalid TOML"], "fix the syntax", c.fresh)


def config_missing(c: Ctx) -> Case:
    config = c.tmp / "missing.toml"
    return Case(["run", "--config", config, "--work", c.fresh], [str(config), "not found"], "check the --config path",
                c.fresh)


def config_section_not_a_table(c: Ctx) -> Case:
    config = c.config_file("embed = 3\n")
    return Case(["run", "--config", config, "--work", c.fresh], [str(config), "'embed' must be a [embed] table"],
                "under a [embed] line", c.fresh)


def config_output_outside_the_work_directory(c: Ctx) -> Case:
    config = c.config_file(f'work = "{c.tmp / "w"}"\n[emit]\noutput = "../published"\n')
    c.copy()
    return Case(["emit", "--config", config, "--quiet"], [str(config), "emit.output '../published'", "not inside"],
                "give a relative name", c.tmp / "w")


def config_output_absolute_elsewhere(c: Ctx) -> Case:
    config = c.config_file(f'work = "{c.tmp / "w"}"\n[emit]\noutput = "{c.tmp / "elsewhere"}"\n')
    c.copy()
    return Case(["emit", "--config", config, "--quiet"], [str(config), "not inside"], "give a relative name",
                c.tmp / "w")


def config_output_through_a_symlink_out(c: Ctx) -> Case:
    work = c.copy()
    (c.tmp / "outside").mkdir()
    (work / "tasks" / "default" / "link").symlink_to(c.tmp / "outside")  # emit.output lies in the task's folder
    config = c.config_file(f'work = "{work}"\n[emit]\noutput = "link/set"\n')
    return Case(["emit", "--config", config, "--quiet"], [str(config), "'link/set'", "not inside"],
                "give a relative name", work)


def config_output_onto_the_query_tables(c: Ctx) -> Case:
    return Case(c.on_built("emit", "--output", "query"), ["--output", "emit.output 'query'", "albat's own folder"],
                "give a relative name", c.tmp / "w")


def memory_budget_not_understood(c: Ctx) -> Case:
    config = c.config_file('[index]\nmemory_budget = "4 gigs"\n')
    return Case(["index", "--config", config, "--work", c.fresh], [str(config), 'memory_budget = "4 gigs"'],
                "give a size such as 4GB", c.fresh)


# ----- stages on a finished work directory -----------------------------------------------------------
def zero_adaptation_examples(c: Ctx) -> Case:
    path = c.file("adaptation.jsonl", b"")
    return Case(c.on_built("query", "--adaptation", path), [str(path), "holds no rows"], "add rows", c.tmp / "w")


def adaptation_text_column_missing(c: Ctx) -> Case:
    path = c.file("adaptation.jsonl", '{"body": "a proof"}\n')
    return Case(c.on_built("query", "--adaptation", path), [str(path), "no column 'text'"],
                "pass --adaptation-text-column", c.tmp / "w")


def query_with_another_encoder(c: Ctx) -> Case:
    return Case(c.on_built("query", "--query-encoder", c.encoders["seed1"], "--k", 4),
                [str(c.wiki.adaptation), c.encoders["seed1"]], "drop --query-encoder", c.tmp / "w")


def query_encoder_of_another_dimension(c: Ctx) -> Case:
    encoder, argv = c.store_then_swap_encoder("dim48")
    return Case(argv, [str(encoder), "dimension 48", "holds 32"], "use the store's encoder", c.tmp / "w")


def encoder_checkpoint_changed_under_its_name(c: Ctx) -> Case:
    encoder, argv = c.store_then_swap_encoder("seed1")
    return Case(argv, [str(encoder), "different embeddings"], "restore that checkpoint or re-embed", c.tmp / "w")


def index_from_another_store(c: Ctx) -> Case:
    other = c.tmp / "other"
    assert albat("embed", "--work", other, "--input", c.parquet(c.rows(40), "small.parquet"), "--encoder", c.encoder,
                 "--quiet") == 0
    assert albat("index", "--work", other, "--quiet") == 0
    argv = c.on_built("query", "--k", 4)
    shutil.rmtree(c.tmp / "w" / "index")
    shutil.copytree(other / "index", c.tmp / "w" / "index")
    return Case(argv, [str(c.tmp / "w" / "index"), "another store"], "delete that folder and rerun `albat index`",
                c.tmp / "w")


def budget_larger_than_the_pool(c: Ctx) -> Case:
    return Case(c.on_built("filter", "--budget", 100_000), ["budget 100000", "exceeds"], "lower filter.budget",
                c.tmp / "w")


def negative_budget(c: Ctx) -> Case:
    return Case(c.on_built("filter", "--budget", -3), ["--budget", "filter.budget = -3"], "give an integer >= 0",
                c.tmp / "w")


def unknown_selection_method(c: Ctx) -> Case:
    return Case(c.on_built("filter", "--method", "oracle"), ["'oracle'"], "choose one of", c.tmp / "w")


def malformed_method_option(c: Ctx) -> Case:
    return Case(c.on_built("filter", "--method-option", "temperature"), ["'temperature'"], "KEY=VALUE", c.tmp / "w")


def zero_rows_per_output_shard(c: Ctx) -> Case:
    return Case(c.on_built("emit", "--emit-shard-rows", 0), ["--emit-shard-rows", "emit.shard_rows = 0"],
                "give an integer >= 1", c.tmp / "w")


def query_before_embed(c: Ctx) -> Case:
    return Case(["query", "--work", c.fresh, "--adaptation", c.wiki.adaptation, "--quiet"], [str(c.fresh / "store")],
                "run `albat embed` first", c.fresh)


def emit_before_filter(c: Ctx) -> Case:
    return Case(["emit", "--work", c.fresh, "--quiet"], [str(c.fresh / "tasks/default/filter")], "run `albat filter` first", c.fresh)


def a_second_writer(c: Ctx) -> Case:
    work = c.copy()
    holder = Workdir(work)  # another process's lock, as far as flock goes: a separate open of the directory
    return Case(["filter", "--config", c.config, "--work", work, "--budget", 5, "--quiet"], [str(work), "in use by pid"],
                "wait for it to finish", work, during=holder.lock, release=holder.unlock)


def sql_that_writes(c: Ctx) -> Case:
    work = c.copy()
    return Case(["sql", work, f"COPY (SELECT 1) TO '{work}/x.csv'"], ["COPY"], "use --out FILE", work)


def sql_reading_outside_the_work_directory(c: Ctx) -> Case:
    work = c.copy()
    return Case(["sql", work, "SELECT * FROM read_text('/etc/hostname')"], ["/etc/hostname"],
                "query the work directory's views", work)


def verify_without_a_work_directory(c: Ctx) -> Case:
    return Case(["verify", c.fresh], [str(c.fresh), "no such work directory"], "pass the --work of a run", c.fresh)


# ----- parameters: type and range, before any model loads ------------------------------------------
def config_budget_a_word(c: Ctx) -> Case:
    config = c.config_file('[filter]\nbudget = "ten"\n')
    return Case(["filter", "--config", config, "--work", c.fresh], [str(config), 'filter.budget = "ten"'],
                "give an integer >= 0", c.fresh)


def config_budget_a_fraction(c: Ctx) -> Case:
    config = c.config_file("[filter]\nbudget = 2.5\n")
    return Case(["filter", "--config", config, "--work", c.fresh], [str(config), "filter.budget = 2.5", "not an integer"],
                "give an integer >= 0", c.fresh)


def config_budget_a_boolean(c: Ctx) -> Case:
    config = c.config_file("[filter]\nbudget = true\n")
    return Case(["filter", "--config", config, "--work", c.fresh], [str(config), "filter.budget = true", "a boolean"],
                "give an integer >= 0", c.fresh)


def zero_neighbours(c: Ctx) -> Case:
    return Case(c.on_built("query", "--k", 0), ["--k", "query.k = 0"], "give an integer >= 1", c.tmp / "w")


def backbone_weight_nan(c: Ctx) -> Case:
    return Case(c.on_built("emit", "--backbone-weight", "nan"), ["--backbone-weight", "emit.backbone_weight = nan"],
                "give a finite number >= 0", c.tmp / "w")


def dedup_threshold_above_one(c: Ctx) -> Case:
    return Case(c.on_built("query", "--dedup-threshold", 1.5), ["query.dedup_threshold = 1.5", "too large"],
                "within [-1, 1]", c.tmp / "w")


def retrieve_by_on_a_text_store(c: Ctx) -> Case:
    return Case(c.on_built("query", "--retrieve-by", "caption"), ["--retrieve-by caption", "only an image store"],
                "drop the option for a text store", c.tmp / "w")


def method_option_out_of_range(c: Ctx) -> Case:
    return Case(c.on_built("filter", "--method", "classifier", "--method-option", "C=0"), ["C", "0"], "> 0", c.tmp / "w")


def value_holding_line_breaks(c: Ctx) -> Case:
    """Found by tests/test_properties.py: a value quoted in the error must not break it into lines."""
    return Case(c.on_built("index", "--index-key", "IVF\nFlat\x1e"), ["index key 'IVF\\nFlat\\x1e'"],
                "drop --index-key", c.tmp / "w")


def path_holding_a_nul(c: Ctx) -> Case:
    """Found by tests/test_properties.py: the OS refuses a NUL in a path deep inside (ValueError)."""
    return Case(c.on_built("emit", "--output", "out\x00put"), ["emit.output", "out\\u0000put", "NUL character"],
                "give a string", c.tmp / "w")


# ----- ids that do not fit int64 -----------------------------------------------------------------
def uint64_id_beyond_int64(c: Ctx) -> Case:
    rows = [{**r, "id": i} for i, r in enumerate(c.rows())]
    rows[7]["id"] = 2**63 + 5
    path = c.parquet(rows, schema=pa.schema([(k, pa.uint64() if k == "id" else pa.string()) for k in rows[0]]))
    return Case(c.embed(path, extra=("--id-column", "id")), [f"{path} row 7", f"id {2**63 + 5}", "column 'id'",
                                                              "does not fit int64"], "drop --id-column", c.fresh)


def json_id_beyond_uint64(c: Ctx) -> Case:
    path = c.file("corpus.jsonl", '{"text": "a", "id": 1}\n{"text": "b", "id": 123456789012345678901234567890}\n')
    return Case(c.embed(path, extra=("--id-column", "id")), [f"{path} line 2", "column 'id'", "does not fit int64"],
                "give ids within", c.fresh)


def json_id_below_int64(c: Ctx) -> Case:
    path = c.file("corpus.jsonl", f'{{"text": "a", "id": {-(2**63) - 1}}}\n')
    return Case(c.embed(path, extra=("--id-column", "id")), [f"{path} line 1", "does not fit int64"],
                "drop --id-column", c.fresh)


# ----- stages check what they read -----------------------------------------------------------------
def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path, keep: int) -> None:
    path.write_text(path.read_text()[:keep])


# name -> (stage and flags run on a finished copy, the file damaged, how, words of the error, its fix)
DAMAGED: dict[str, tuple[tuple, str, Callable[[Path], None], str, str]] = {
    "query_on_a_flipped_store_shard": (("query", "--k", 4), "store/shards/part-00002.emb.npy",
                                       lambda p: _flip_byte(p, 300), "SHA-256 differs", "rerun `albat embed`"),
    "query_on_a_changed_metadata_shard": (("query", "--k", 4), "store/shards/part-00001.meta.parquet",
                                          lambda p: shutil.copy(p.with_name("part-00000.meta.parquet"), p),
                                          "SHA-256 differs", "rerun `albat embed`"),
    "index_on_a_truncated_store_json": (("index", "--recall-k", 5), "store/store.json", lambda p: _truncate(p, 50),
                                        "damaged", "run `albat embed`"),
    "query_on_a_flipped_index_file": (("query", "--k", 4), "index/knn.index",
                                      lambda p: _flip_byte(p, p.stat().st_size // 2), "SHA-256 differs",
                                      "rerun `albat index`"),
    "query_on_truncated_index_infos": (("query", "--k", 4), "index/index_infos.json", lambda p: _truncate(p, 30),
                                       "damaged", "rerun `albat index`"),
    "emit_on_a_flipped_metadata_shard": (("emit", "--backbone-weight", 0.5), "store/shards/part-00003.meta.parquet",
                                         lambda p: _flip_byte(p, 100), "SHA-256 differs", "rerun `albat embed`"),
}


def _damaged_case(name: str) -> Callable[[Ctx], Case]:
    stage_flags, relative, damage, words, fix = DAMAGED[name]

    def make(c: Ctx) -> Case:
        argv = c.on_built(*stage_flags)
        damage(c.tmp / "w" / relative)
        return Case(argv, [str(c.tmp / "w" / relative), words], fix, c.tmp / "w")

    make.__name__ = name
    return make


def filter_after_a_truncated_query_record(c: Ctx) -> Case:
    argv = c.on_built("filter", "--budget", 5)
    _truncate(c.tmp / "w" / "tasks/default/_stages/query.json", 20)
    return Case(argv, [str(c.tmp / "w" / "tasks/default/query"), "no completed query stage"], "run `albat query`",
                c.tmp / "w")


# ----- sql --out and verify ------------------------------------------------------------------------
def sql_out_onto_a_store_shard(c: Ctx) -> Case:
    work = c.copy()
    target = work / "store/shards/part-00000.meta.parquet"
    return Case(["sql", work, "SELECT 1 AS x", "--out", target], [str(target), "albat's own folders"],
                "write --out outside", work)


def sql_out_into_the_stage_records(c: Ctx) -> Case:
    work = c.copy()
    target = work / "_stages/query.csv"
    return Case(["sql", work, "SELECT 1 AS x", "--out", target], [str(target), "albat's own folders"],
                "write --out outside", work)


def sql_out_into_the_emitted_set(c: Ctx) -> Case:
    work = c.copy()
    target = work / "tasks/default/output/data/part-00009.parquet"
    return Case(["sql", work, "SELECT * FROM shards", "--out", target], [str(target), "albat's own folders"],
                "write --out outside", work)


def sql_out_through_a_symlink_into_the_index(c: Ctx) -> Case:
    work = c.copy()
    (c.tmp / "elsewhere").symlink_to(work / "index")
    target = c.tmp / "elsewhere" / "knn.parquet"
    return Case(["sql", work, "SELECT 1 AS x", "--out", target], [str(target), "albat's own folders"],
                "write --out outside", work)


def sql_out_csv_with_a_list_column(c: Ctx) -> Case:
    work = c.copy()
    target = c.tmp / "pairs.csv"
    return Case(["sql", work, "SELECT [1, 2] AS xs", "--out", target], [str(target), "'xs'", "CSV cannot hold"],
                "pairs.parquet", work)


def verify_on_a_plain_directory(c: Ctx) -> Case:
    (c.tmp / "plain").mkdir()
    (c.tmp / "plain" / "notes.txt").write_text("not albat's")
    return Case(["verify", c.tmp / "plain"], [str(c.tmp / "plain"), "not an albat work directory"],
                "pass the --work of a run", c.tmp / "plain")


# ----- directory inputs and Unicode ----------------------------------------------------------------
def directory_holding_only_a_symlink_loop(c: Ctx) -> Case:
    (c.tmp / "loop").mkdir()
    (c.tmp / "loop" / "again").symlink_to(c.tmp / "loop")
    return Case(c.embed(c.tmp / "loop"), [str(c.tmp / "loop"), "holds no .parquet"], "point the input at the corpus",
                c.fresh)


def lone_surrogate_in_json_text(c: Ctx) -> Case:
    path = c.file("corpus.jsonl", '{"text": "fine"}\n{"text": "half a pair \\udc80"}\n')
    return Case(c.embed(path), [f"{path} line 2", "column 'text'", "lone UTF-16 surrogate"], "fix that escape", c.fresh)


def lone_surrogate_in_an_adaptation_set(c: Ctx) -> Case:
    path = c.file("adaptation.jsonl", '{"text": "\\ud83d alone"}\n')
    return Case(c.on_built("query", "--adaptation", path), [f"{path} line 1", "surrogate"], "fix that escape",
                c.tmp / "w")


# ----- the formats corpora ship in (stores.sources; tests/test_readers.py) ----------------------------
def txt_format_on_a_csv(c: Ctx) -> Case:
    """Read line by line, the header would be embedded as an example."""
    path = c.file("corpus.csv", "text,label\nhello,a\n")
    return Case(c.embed(path, extra=("--format", "txt")), [str(path), "embed its header"], "pass --format csv", c.fresh)


def csv_row_with_too_many_fields(c: Ctx) -> Case:
    path = c.file("corpus.csv", "id,text\n1,fine\n2,one,extra\n")
    return Case(c.embed(path), [str(path), "expected 2 columns, found 3"], "fix that row's quoting", c.fresh)


def csv_quote_never_closed(c: Ctx) -> Case:
    path = c.file("corpus.csv", 'id,text\n1,fine\n2,"opened\n3,and swallowed\n')
    return Case(c.embed(path), [f"{path} row 1", "never closed"], "close that quote", c.fresh)


def csv_without_the_text_column(c: Ctx) -> Case:
    path = c.file("corpus.tsv", "id\tbody\n1\thello\n")
    return Case(c.embed(path), [str(path), "no column 'text' (columns: id, body)"], "pass --text-column", c.fresh)


def truncated_gzip_jsonl(c: Ctx) -> Case:
    import gzip

    data = gzip.compress("".join(f'{{"text": "row {i} {"x" * 40}"}}\n' for i in range(400)).encode())
    path = c.file("corpus.jsonl.gz", data[: len(data) // 2])
    return Case(c.embed(path), [f"{path} line", "truncated or corrupt"], "re-download or re-compress", c.fresh)


def zstd_that_is_not_zstd(c: Ctx) -> Case:
    path = c.file("corpus.jsonl.zst", '{"text": "plain, not compressed"}\n')
    return Case(c.embed(path), [f"{path} line 1", "truncated or corrupt"], "re-download or re-compress", c.fresh)


def compressed_parquet(c: Ctx) -> Case:
    path = c.file("corpus.parquet.gz", b"\x1f\x8b")
    return Case(c.embed(path), [str(path), "compressed inside"], "decompress the file", c.fresh)


def url_that_does_not_exist(c: Ctx) -> Case:
    url = f"memory://albat-bad-inputs-{c.tmp.name}/missing.jsonl"
    return Case(c.embed(url), [url, "no such file or folder"], "check the input URL", c.fresh)


def url_scheme_without_a_file_system(c: Ctx) -> Case:
    url = "nosuchscheme://bucket/corpus.jsonl"
    return Case(c.embed(url), [url, "no file system for 'nosuchscheme://'"], "install the fsspec package", c.fresh)


def hub_name_while_offline(c: Ctx) -> Case:
    return Case(c.embed("hub:albat-test/not-cached"), ["hub:albat-test/not-cached", "HF_HUB_OFFLINE=1"],
                "save_to_disk", c.fresh)


def chat_messages_without_roles(c: Ctx) -> Case:
    path = c.file("chat.jsonl", '{"messages": [{"speaker": "user", "text": "hi"}]}\n')
    return Case(c.embed(path, extra=("--text-column", "messages")), [str(path), "'messages' holds list<"],
                "a chat column (a list of {role, content} structs)", c.fresh)


def empty_chat(c: Ctx) -> Case:
    path = c.file("chat.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": []}\n')
    return Case(c.embed(path, extra=("--text-column", "messages")), [f"{path} row 1", "empty text in column 'messages'"],
                "--skip-empty", c.fresh)


def adaptation_column_that_cannot_take_the_backbone_type(c: Ctx) -> Case:
    """The built store keeps the corpus's integer `id`; adaptation rows with text ids cannot share it."""
    path = c.file("adaptation.jsonl", '{"text": "an adaptation example", "id": "doc-7"}\n')
    return Case(c.on_built("query", "--adaptation", path), [str(path), "adaptation column 'id' holds string",
                                                            "holds int64"], "--no-adaptation", c.tmp / "w")


def adaptation_column_named_like_albat_provenance(c: Ctx) -> Case:
    path = c.file("adaptation.jsonl", '{"text": "an adaptation example", "albat_weight": 3.0}\n')
    return Case(c.on_built("query", "--adaptation", path), [str(path), "column 'albat_weight' collides"],
                "rename or drop it", c.tmp / "w")


CASES = [empty_parquet, empty_jsonl, empty_text_file, wrong_text_column, wrong_id_column, wrong_keep_column,
         text_column_not_text, null_text, empty_text, null_text_in_a_later_shard, non_utf8_jsonl, non_utf8_text_file,
         ten_megabyte_document, duplicated_ids_across_files, truncated_parquet, ids_not_integers, null_id,
         invalid_json_line, json_line_not_an_object, json_types_differ_across_rows, missing_input, unknown_suffix,
         directory_without_corpus_files, column_named_like_albat_metadata, text_file_with_an_id_column,
         corpus_changed_under_a_store, force_with_a_truncated_corpus, config_unknown_key, config_invalid_toml,
         config_missing, config_section_not_a_table, config_output_outside_the_work_directory,
         config_output_absolute_elsewhere, config_output_through_a_symlink_out, config_output_onto_the_query_tables,
         memory_budget_not_understood, zero_adaptation_examples, adaptation_text_column_missing,
         query_with_another_encoder, query_encoder_of_another_dimension, encoder_checkpoint_changed_under_its_name,
         index_from_another_store, budget_larger_than_the_pool, negative_budget, unknown_selection_method,
         malformed_method_option, zero_rows_per_output_shard, query_before_embed, emit_before_filter, a_second_writer,
         sql_that_writes, sql_reading_outside_the_work_directory, verify_without_a_work_directory,
         config_budget_a_word, config_budget_a_fraction, config_budget_a_boolean, zero_neighbours, backbone_weight_nan,
         dedup_threshold_above_one, retrieve_by_on_a_text_store, method_option_out_of_range, value_holding_line_breaks, path_holding_a_nul,
         uint64_id_beyond_int64, json_id_beyond_uint64,
         json_id_below_int64, *map(_damaged_case, DAMAGED), filter_after_a_truncated_query_record,
         sql_out_onto_a_store_shard,
         sql_out_into_the_stage_records, sql_out_into_the_emitted_set, sql_out_through_a_symlink_into_the_index,
         sql_out_csv_with_a_list_column, verify_on_a_plain_directory, directory_holding_only_a_symlink_loop,
         lone_surrogate_in_json_text, lone_surrogate_in_an_adaptation_set, txt_format_on_a_csv,
         csv_row_with_too_many_fields, csv_quote_never_closed, csv_without_the_text_column, truncated_gzip_jsonl,
         zstd_that_is_not_zstd, compressed_parquet, url_that_does_not_exist, url_scheme_without_a_file_system,
         hub_name_while_offline, chat_messages_without_roles, empty_chat,
         adaptation_column_that_cannot_take_the_backbone_type, adaptation_column_named_like_albat_provenance]


def tree(work: Path) -> list[tuple] | None:
    """Name, kind, size and mtime of the work directory and everything in it (None: absent)."""
    if not work.exists():
        return None
    entries = [work, *sorted(work.rglob("*"))]
    return [(str(p.relative_to(work)), p.is_dir(), p.lstat().st_size if not p.is_dir() else 0, p.lstat().st_mtime_ns)
            for p in entries]


@pytest.fixture(scope="module")
def finished(small_wiki: SmallWiki, tiny_encoder: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return finished_small_run(tmp_path_factory.mktemp("finished"), small_wiki, tiny_encoder)


@pytest.fixture(scope="module")
def other_encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("other_encoders")
    return {"dim48": str(make_tiny_encoder(root / "dim48", seed=0, hidden=48)),
            "seed1": str(make_tiny_encoder(root / "seed1", seed=1, hidden=32))}


def test_the_corpus_has_at_least_25_cases() -> None:
    assert len(CASES) >= 25 and len({c.__name__ for c in CASES}) == len(CASES)


@pytest.mark.parametrize("make_case", CASES, ids=lambda f: f.__name__)
def test_bad_input_is_answered_in_one_line_and_changes_nothing(
        make_case: Callable[[Ctx], Case], small_wiki: SmallWiki, tiny_encoder: str, finished: tuple[Path, Path],
        other_encoders: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ctx = Ctx(tmp_path, small_wiki, tiny_encoder, finished[0], finished[1], other_encoders)
    case = make_case(ctx)
    before = tree(case.work)
    case.during()
    capsys.readouterr()
    try:
        rc = albat(*case.argv)
    finally:
        case.release()
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("albat: error: "), err
    for name in case.names:
        assert name in err, (name, err)
    assert case.fix in err, (case.fix, err)
    assert tree(case.work) == before
