"""`albat run --modality image --method albat` end to end on tiny real images and a tiny random-weight
open_clip model: shards read back as PIL images, exact duplicates blocked by pixels, the imagefolder
export, and the store's encoder identity enforced."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from conftest import albat
from image_fixtures import encoded, image_folder, picture, tiny_clip_config

if importlib.util.find_spec("open_clip") is None:
    pytest.skip("image extra not installed", allow_module_level=True)


def _adaptation(root: Path, corpus: Path) -> Path:
    root.mkdir()
    records = []
    for i in range(3):
        (root / f"a{i}.png").write_bytes(encoded(picture(50 + i, 0)))
        records.append({"file_name": f"a{i}.png", "text": f"my red picture {i}"})
    shutil.copy(corpus / "red" / "r3.png", root / "copy.png")  # the same pixels as a corpus image
    records.append({"file_name": "copy.png", "text": "a copy"})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("image_run")
    corpus = image_folder(tmp / "corpus")
    adaptation = _adaptation(tmp / "adaptation", corpus)
    config = tmp / "run.toml"
    config.write_text(f"""work = "{tmp / 'work'}"
seed = 0
[embed]
modality = "image"
input = ["{corpus}"]
image_model = "{tiny_clip_config(tmp)}"
shard_rows = 5
image_workers = 1
[query]
adaptation = ["{adaptation}"]
k = 8
dedup_threshold = 1.0
[filter]
method = "albat"
budget = 4
[emit]
emit_format = "imagefolder"
""")
    assert albat("run", "--config", config, "--quiet") == 0
    return tmp


def test_shards_load_as_pil_images(image_run: Path) -> None:
    import datasets
    from PIL import Image

    shards = sorted((image_run / "work" / "tasks/default/output/data").glob("*.parquet"))
    data = datasets.load_dataset("parquet", data_files=[str(p) for p in shards], split="train")
    assert isinstance(data.features["image"], datasets.Image)
    rows = list(data)
    manifest = json.loads((image_run / "work" / "tasks/default/output" / "manifest.json").read_text())
    assert manifest["method"] == "albat" and manifest["encoder"]["modality"] == "image"
    assert sum(r["albat_is_adaptation"] for r in rows) == 4
    assert sum(not r["albat_is_adaptation"] for r in rows) == manifest["counts"]["selected"] <= 4
    for row in rows:
        assert isinstance(row["image"], Image.Image) and row["image"].size == (24, 20)
        assert row["text"]


def test_exact_copy_is_blocked_and_never_selected(image_run: Path) -> None:
    import pyarrow.parquet as pq

    work = image_run / "work"
    blocked = pq.read_table(work / "tasks/default/query" / "blocked.parquet").to_pylist()
    exact = [b for b in blocked if b["reason"].startswith("exact duplicate of adaptation example 3")]
    meta = [r for path in sorted((work / "store" / "shards").glob("*.meta.parquet")) for r in pq.read_table(path).to_pylist()]
    copy_id = next(r["albat_id"] for r in meta if r["image"]["path"] == "red/r3.png")
    assert [b["id"] for b in exact] == [copy_id]
    selected = pq.read_table(work / "tasks/default/filter" / "selection.parquet").to_pylist()
    assert copy_id not in {s["id"] for s in selected if s["keep"]}


def test_imagefolder_export_feeds_datasets_imagefolder(image_run: Path) -> None:
    import datasets

    folder = image_run / "work" / "tasks/default/output-imagefolder"
    lines = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    rows = json.loads((image_run / "work" / "tasks/default/output" / "manifest.json").read_text())["rows"]
    assert len(lines) == rows and all((folder / line["file_name"]).is_file() for line in lines)
    data = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
    assert len(data) == rows and data[0]["image"].size == (24, 20) and "albat_weight" in data.column_names
    assert sorted(data["text"]) == sorted(line["text"] for line in lines)
    # DreamBooth reads every file of a folder as an image: images/ holds nothing else
    assert sorted(p.suffix for p in (folder / "images").iterdir()) == [".jpg"] * sum(
        line["original_name"].endswith(".jpg") for line in lines) + [".png"] * sum(
        line["original_name"].endswith(".png") for line in lines)


def test_rerun_skips_and_query_refuses_another_model(image_run: Path, tmp_path: Path) -> None:
    config = image_run / "run.toml"
    assert albat("run", "--config", config, "--quiet") == 0
    other = tmp_path / "other.json"
    cfg = json.loads(tiny_clip_config(tmp_path).read_text())
    cfg["vision_cfg"]["width"] = 48
    other.write_text(json.dumps(cfg))
    assert albat("query", "--config", config, "--query-encoder", other, "--force", "--quiet") != 0


def test_decoding_workers_do_not_change_the_store(image_run: Path, tmp_path: Path) -> None:
    import numpy as np

    from albat.stores.embedding_store import EmbeddingStore

    assert albat("embed", "--work", tmp_path / "w", "--modality", "image", "--input", image_run / "corpus",
                 "--image-model", tiny_clip_config(image_run), "--shard-rows", "5", "--image-workers", "0",
                 "--quiet") == 0
    ours, theirs = EmbeddingStore(tmp_path / "w" / "store"), EmbeddingStore(image_run / "work" / "store")
    assert ours.shard_indices() == theirs.shard_indices()
    for i in ours.shard_indices():
        np.testing.assert_allclose(ours.vectors(i), theirs.vectors(i), atol=1e-6)
        assert ours.metadata(i).equals(theirs.metadata(i))


def test_contact_sheet_reads_the_work_directory(image_run: Path, capsys: pytest.CaptureFixture) -> None:
    """scripts/contact_sheet.py (what `make demo-image` ends with) finds the task's output in a work
    directory, draws one tile per emitted image, and names the fix when a task has no output."""
    from PIL import Image

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("contact_sheet", REPO / "scripts" / "contact_sheet.py")
    sheet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sheet)
    import pyarrow.parquet as pq

    output = image_run / "work" / "tasks/default/output"
    flags = [f for path in sorted((output / "data").glob("*.parquet"))
             for f in pq.read_table(path, columns=["albat_is_adaptation"]).column(0).to_pylist()]
    adaptation, selected = sum(flags), len(flags) - sum(flags)
    assert adaptation == 4  # the four adaptation images (albat may keep fewer than its budget of 4)
    out = image_run / "sheet.png"
    assert sheet.main([str(image_run / "work"), "--out", str(out)]) == 0
    assert f"{adaptation} adaptation and {selected} selected images" in capsys.readouterr().out
    rows = lambda n: (n + sheet.PER_ROW - 1) // sheet.PER_ROW  # noqa: E731
    height = 2 * sheet.LABEL + (rows(adaptation) + rows(selected)) * (sheet.TILE + sheet.LABEL) + 4
    assert Image.open(out).size == (sheet.PER_ROW * sheet.TILE, height)
    with pytest.raises(SystemExit, match="no manifest.json there nor in task 'other'"):
        sheet.main([str(image_run / "work"), "--task", "other", "--out", str(image_run / "other.png")])
    assert not (image_run / "other.png").exists() and not (image_run / "work" / "tasks" / "other").exists()


def test_captions_alone_retrieve_captions(image_run: Path, tmp_path: Path, monkeypatch) -> None:
    """Captions without images query the store's captions (text→text): candidates are each caption's k
    nearest corpus captions by brute force over the stored caption vectors, a corpus row with the same
    caption is blocked as a near-duplicate, every method compares captions (the classifier and albat
    run), and emit writes the selected images without the imageless adaptation rows. The stage reads
    the caption vectors once (one prefetch pass for the neighbours and both duplicate searches)."""
    import numpy as np
    import pyarrow.parquet as pq

    from albat.pipeline import exact_scan
    from albat.pipeline.filter import query_store
    from albat.stores.embedding_store import EmbeddingStore, PairSideView
    from albat.pipeline.report import task_workdir

    passes = []
    scan = exact_scan.ExactScan._scan
    monkeypatch.setattr(exact_scan.ExactScan, "_scan", lambda self, *a: passes.append(1) or scan(self, *a))
    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"text": "a red picture number 3"}\n{"text": "something blue"}\n')
    config, task = image_run / "run.toml", ["--task", "captions"]
    assert albat("query", "--config", config, *task, "--adaptation", captions, "--dedup-threshold", "0.999",
                 "--quiet") == 0
    assert len(passes) == 1
    work = task_workdir(image_run / "work", "captions")
    assert work.stage_record("query")["summary"]["side"] == "pair"
    assert not (work.query / "adaptation.pair.npy").exists()
    store = EmbeddingStore(work.store)
    ids = store.all_ids()
    pair = np.concatenate([np.load(store.paths(i).pair) for i in store.shard_indices()])
    texts = np.concatenate([store.metadata(i)["text"].to_numpy(zero_copy_only=False) for i in store.shard_indices()])
    queries = np.load(work.query / "adaptation.npy")
    pairs = pq.read_table(work.query / "candidate_pairs.parquet").to_pandas()
    k = int(work.stage_record("query")["summary"]["k"])
    for q in range(2):
        expected = np.argsort(-(pair @ queries[q]), kind="stable")[:k]
        got = pairs[pairs.query_idx == q].sort_values("rank")
        assert sorted(got.candidate_id) == sorted(ids[expected])
        assert np.allclose(got.similarity, np.sort(pair @ queries[q])[::-1][:k], atol=1e-5)
    twin = int(ids[list(texts).index("a red picture number 3")])
    assert pairs[pairs.query_idx == 0].sort_values("rank").candidate_id.iloc[0] == twin
    blocked = pq.read_table(work.query / "blocked.parquet").to_pandas()
    assert twin in set(blocked.id) and "near-duplicate of adaptation example 0" in \
        blocked.set_index("id").loc[twin, "reason"]
    view = query_store(work)
    assert isinstance(view, PairSideView) and np.array_equal(view.vectors_for_ids(ids[:3]), pair[:3])
    for method in ("classifier", "albat"):
        assert albat("filter", "--config", config, *task, "--method", method, "--budget", "3", "--quiet") == 0
        selection = pq.read_table(work.filter / "selection.parquet").to_pandas()
        kept = selection[selection.keep]
        assert len(kept) == 3 and twin not in set(kept.id)
    assert albat("emit", "--config", config, *task, "--emit-format", "parquet", "--quiet") == 0
    manifest = json.loads((work.output / "manifest.json").read_text())
    assert manifest["counts"]["adaptation"] == 0 and "captions without images" in manifest["counts"]["adaptation_left_out"]
    rows = pq.read_table(work.output / "data").to_pandas()
    assert len(rows) == 3 and set(rows.albat_id) == set(kept.id) and rows.image.notna().all()


def test_retrieve_by_caption_keeps_the_images(image_run: Path, capsys: pytest.CaptureFixture) -> None:
    """--retrieve-by caption with an image adaptation set: captions retrieve captions, the pixel copy
    is still blocked as an exact duplicate, and the adaptation rows are emitted with their images;
    --retrieve-by image with captions alone is refused in one line naming the fix."""
    import pyarrow.parquet as pq

    from albat.pipeline.report import task_workdir

    config, task = image_run / "run.toml", ["--task", "bycaption"]
    assert albat("query", "--config", config, *task, "--retrieve-by", "caption", "--quiet") == 0
    work = task_workdir(image_run / "work", "bycaption")
    assert work.stage_record("query")["summary"]["side"] == "pair"
    reasons = pq.read_table(work.query / "blocked.parquet").column("reason").to_pylist()
    assert any(r.startswith("exact duplicate of adaptation example 3") for r in reasons)  # copy.png's pixels
    assert albat("filter", "--config", config, *task, "--method", "knn", "--budget", "3", "--quiet") == 0
    assert albat("emit", "--config", config, *task, "--emit-format", "parquet", "--quiet") == 0
    manifest = json.loads((work.output / "manifest.json").read_text())
    assert manifest["counts"]["adaptation"] == 4 and "adaptation_left_out" not in manifest["counts"]
    rows = pq.read_table(work.output / "data").to_pandas()
    assert rows.albat_is_adaptation.sum() == 4 and rows.image.notna().all()
    captions = image_run / "only-captions.jsonl"
    captions.write_text('{"text": "a red picture"}\n')
    capsys.readouterr()
    code = albat("query", "--config", config, "--task", "refused", "--adaptation", captions, "--retrieve-by", "image",
                 "--quiet")
    err = capsys.readouterr().err
    assert code == 2 and "captions alone have no images to retrieve by; use --retrieve-by caption" in err
    assert len(err.strip().splitlines()) == 1 and not (image_run / "work" / "tasks" / "refused").exists()


def test_selected_backbone_images_come_back_whole(image_run: Path) -> None:
    """knn fills the budget: every selected row's image equals the corpus file it came from (runs last:
    it replaces the run's selection)."""
    import datasets
    import numpy as np
    from PIL import Image

    config = image_run / "run.toml"
    assert albat("filter", "--config", config, "--method", "knn", "--budget", "4", "--quiet") == 0
    assert albat("emit", "--config", config, "--output", "knn", "--no-adaptation", "--quiet") == 0
    data = datasets.load_dataset("parquet", data_files=str(image_run / "work" / "tasks/default/knn/data" / "*.parquet"), split="train")
    assert len(data) == 4
    raw = data.cast_column("image", datasets.Image(decode=False))
    for row, undecoded in zip(data, raw):
        original = Image.open(image_run / "corpus" / undecoded["image"]["path"])
        assert np.array_equal(np.asarray(original.convert("RGB")), np.asarray(row["image"].convert("RGB")))
        assert undecoded["image"]["bytes"] == (image_run / "corpus" / undecoded["image"]["path"]).read_bytes()
        assert row["albat_weight"] > 0 and row["albat_method"] == "knn"
