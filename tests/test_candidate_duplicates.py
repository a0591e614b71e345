"""The query stage blocks candidates with the same content as a better candidate (`dedup_candidates`,
on by default): `candidate_duplicates` by hand and against brute force, and end to end on a corpus
that holds every article twice (once upper-cased, with other spacing and another id)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from albat.pipeline.query import candidate_duplicates
from albat.stores.embedding_store import text_hash
from conftest import albat, small_run_config


def test_each_group_keeps_its_best_candidate_by_hand():
    ids = np.array([10, 11, 12, 13, 14])
    sims = np.array([0.9, 0.8, 0.95, 0.7, 0.6])
    hashes = np.array([1, 1, 2, 2, 3])
    out = candidate_duplicates(ids, sims, hashes, np.array([], np.int64))
    assert out == {11: (1.0, "exact duplicate of candidate 10 (kept in its place)"),
                   13: (1.0, "exact duplicate of candidate 12 (kept in its place)")}


def test_equal_similarity_keeps_the_lowest_id():
    out = candidate_duplicates(np.array([7, 3, 5]), np.array([0.5, 0.5, 0.5]), np.array([9, 9, 9]), np.array([]))
    assert sorted(out) == [5, 7] and all("candidate 3 " in reason for _, reason in out.values())


def test_a_blocked_member_blocks_its_whole_group():
    out = candidate_duplicates(np.array([1, 2, 3, 4]), np.array([0.5, 0.9, 0.7, 0.8]), np.array([5, 5, 5, 6]),
                               np.array([3]))
    assert out == {1: (1.0, "exact duplicate of blocked candidate 3"), 2: (1.0, "exact duplicate of blocked candidate 3")}


def test_nothing_to_block():
    assert candidate_duplicates(np.array([1, 2]), np.array([0.1, 0.2]), np.array([1, 2]), np.array([])) == {}
    assert candidate_duplicates(np.array([], np.int64), np.array([]), np.array([], np.int64), np.array([])) == {}


@pytest.mark.parametrize("seed", range(20))
def test_against_brute_force(seed):
    """Every unblocked row survives iff no row of its hash is blocked and it is the best of its hash
    (highest similarity, then lowest id)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 12))
    ids = rng.permutation(100)[:n]
    sims = rng.choice([0.1, 0.5, 0.9], n)
    hashes = rng.integers(0, 4, n)
    blocked = ids[rng.random(n) < 0.2]
    out = candidate_duplicates(ids, sims, hashes, blocked)
    for i in range(n):
        same = [j for j in range(n) if hashes[j] == hashes[i]]
        best = min(same, key=lambda j: (-sims[j], ids[j]))
        survives = ids[i] not in blocked and not any(ids[j] in blocked for j in same) and best == i
        assert (int(ids[i]) not in out) == (survives or ids[i] in blocked), (i, out)
    survivors = [i for i in range(n) if int(ids[i]) not in out and ids[i] not in blocked]
    assert len({int(hashes[i]) for i in survivors}) == len(survivors)  # two survivors never share content


@pytest.fixture(scope="module")
def doubled(small_wiki, tmp_path_factory):
    """The small corpus with a twin of every article: the same text upper-cased with doubled spaces,
    id + 1,000,000 (the same normalised text, so the same stored hash and, uncased, the same vector)."""
    root = tmp_path_factory.mktemp("doubled")
    rows = pq.read_table(small_wiki.corpus).to_pylist()
    twins = [{**r, "id": r["id"] + 1_000_000, "text": r["text"].upper().replace(" ", "  ")} for r in rows]
    pq.write_table(pa.Table.from_pylist(rows + twins), root / "corpus.parquet")
    return root


def _selected_texts(work) -> list[str]:
    shards = sorted((work / "tasks/default/output/data").glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in shards])
    return [t for t, a in zip(table.column("text").to_pylist(), table.column("albat_is_adaptation").to_pylist()) if not a]


@pytest.mark.parametrize("keep", [False, True])
def test_no_selection_holds_the_same_text_twice(doubled, small_wiki, tiny_encoder, tmp_path, keep):
    config = small_run_config(tmp_path, small_wiki, tiny_encoder)
    config.write_text(config.read_text().replace(str(small_wiki.corpus), str(doubled / "corpus.parquet")))
    assert albat("run", "--config", config, "--quiet", *(["--keep-duplicate-candidates"] if keep else [])) == 0
    work = tmp_path / "work"
    texts = _selected_texts(work)
    assert len(texts) == 20
    distinct = len({text_hash(t) for t in texts})
    blocked = pq.read_table(work / "tasks/default/query/blocked.parquet").to_pylist()
    twins = [b for b in blocked if b["reason"].startswith("exact duplicate of candidate")]
    if keep:  # knn takes both copies of the nearest articles: the check above can fail
        assert distinct < len(texts) and not twins
    else:
        assert distinct == len(texts)
        assert twins and all(b["similarity"] == 1.0 for b in twins)
        kept = {int(b["reason"].split()[4]) for b in twins}
        assert {b["id"] for b in twins}.isdisjoint(kept)  # the row kept in a twin's place is not blocked
