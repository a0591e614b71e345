"""Integrity checks of a work directory (`albat verify`): every file against the checksums and counts
its completion record or manifest holds, and every stage against the ones it was built from.

Each check yields a `Finding`: `ok`, `info` (a stage not run yet, or left incomplete by a killed
run: a rerun finishes it, nothing is wrong) or `drift` (a file changed, missing or extra, an index
or table that no longer matches the store, an output emitted from an earlier run), with the fix.
Nothing is written and no pickle is loaded; files are read whole, so verify costs one read of the
work directory.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from albat.stores.atomic import sha256_file
from albat.stores.embedding_store import ID, EmbeddingStore
from albat.stores.errors import AlbatError
from albat.stores.index_store import INDEX_FILE, INFOS_FILE, IVFDATA_FILE, LABELS
from albat.stores.dataset_card import CARD
from albat.stores.shard_store import DATA, MANIFEST, SUCCESS, shard_glob
from albat.stores.workdir import Workdir

NORM_TOLERANCE = 1e-3


@dataclass
class Finding:
    level: str  # "ok" | "info" | "drift"
    where: str
    message: str

    def line(self) -> str:
        return f"{self.level.upper():<6} {self.where}: {self.message}"


class _Drift(Exception):
    """One check found drift; the rest of that stage's checks would only repeat it."""


def _drift(where: Path | str, message: str) -> _Drift:
    return _Drift(Finding("drift", str(where), message))


def _json(path: Path, fix: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _drift(path, f"unreadable ({exc}); {fix}") from None


def _parquet(path: Path, fix: str, columns: list[str] | None = None) -> pa.Table:
    if not path.exists():
        raise _drift(path, f"missing; {fix}")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise _drift(path, f"unreadable Parquet ({str(exc).splitlines()[0]}); {fix}") from None


def _npy(path: Path, fix: str) -> np.ndarray:
    if not path.exists():
        raise _drift(path, f"missing; {fix}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise _drift(path, f"unreadable array ({exc}); {fix}") from None


def _same_checksum(path: Path, expected: str, fix: str) -> None:
    if not path.exists():
        raise _drift(path, f"missing; {fix}")
    if sha256_file(path) != expected:
        raise _drift(path, f"SHA-256 differs from the recorded one (changed after it was written); {fix}")


def _outside(ids: np.ndarray, sorted_store_ids: np.ndarray) -> np.ndarray:
    """The ids not in the store."""
    ids = np.asarray(ids, dtype=np.int64)
    if not len(sorted_store_ids):
        return ids
    found = np.clip(np.searchsorted(sorted_store_ids, ids), 0, len(sorted_store_ids) - 1)
    return ids[sorted_store_ids[found] != ids]


def _leftovers(directory: Path, patterns: tuple[str, ...]) -> Iterator[Finding]:
    for pattern in patterns:
        for path in sorted(directory.glob(pattern)) if directory.is_dir() else []:
            yield Finding("info", str(path), "left by a killed run; never read, the next run removes it")


# ----- store -------------------------------------------------------------------------------------
def check_store(store: EmbeddingStore) -> tuple[list[Finding], dict[str, Any] | None, np.ndarray | None]:
    """Findings, the store's info and its sorted ids (None unless the store is complete and sound)."""
    fix = "rerun `albat embed --force` to re-embed the corpus"
    findings = list(_leftovers(store.shard_dir, (".*.tmp-*",))) + list(_leftovers(store.root, (".*.tmp-*",)))
    if not store.info_path.exists():
        return findings + [Finding("info", str(store.root), "no embedding store yet; run `albat embed`")], None, None
    try:
        info = _json(store.info_path, "rerun `albat embed --force`")
        dim, ids = int(info["dim"]), []
        if int(info["encoder"]["dim"]) != dim:
            raise _drift(store.info_path, f"encoder dimension {info['encoder']['dim']} differs from the store's {dim}; "
                                          "rerun `albat embed --force`")
        done = set(store.shard_indices())
        for index in sorted(done):
            ids.append(_check_shard(store, index, dim, fix))
        for path in sorted(store.shard_dir.glob("part-*.*")):
            index = int(path.name.split("-")[1].split(".")[0])
            if index not in done:
                if info.get("complete"):
                    raise _drift(path, "belongs to no completed shard; delete it")
                findings.append(Finding("info", str(path), "shard written by a killed run before its completion "
                                        "record; `albat embed` rewrites it"))
        if not info.get("complete"):
            return findings + [Finding("info", str(store.root), f"incomplete ({len(done)} shards done); rerun "
                                       "`albat embed` to finish")], info, None
        if sorted(done) != list(range(int(info["shards"]))):
            missing = sorted(set(range(int(info["shards"]))) - done)
            raise _drift(store.paths(missing[0]).done, f"shard(s) {missing[:5]} of {info['shards']} missing; rerun `albat embed --force`")
        all_ids = np.concatenate(ids) if ids else np.empty(0, np.int64)
        sorted_ids = _check_id_index(store, all_ids, int(info["rows"]))
    except _Drift as exc:
        return findings + [exc.args[0]], None, None
    findings.append(Finding("ok", str(store.root), f"{info['shards']} shards, {info['rows']} rows, dim {dim}, encoder "
                            f"{info['encoder']['name']}; checksums, shapes and norms match the completion records"))
    return findings, info, sorted_ids


def _check_shard(store: EmbeddingStore, index: int, dim: int, fix: str) -> np.ndarray:
    paths = store.paths(index)
    record = _json(paths.done, fix)
    _same_checksum(paths.emb, record["emb_sha256"], fix)
    _same_checksum(paths.meta, record["meta_sha256"], fix)
    if store.pair_column:  # the pair column's vectors (query side), when the store has one
        if "pair_sha256" not in record:
            raise _drift(paths.done, f"names no pair vectors though the store has pair column "
                                     f"'{store.pair_column}'; {fix}")
        _same_checksum(paths.pair, record["pair_sha256"], fix)
    vectors = _npy(paths.emb, fix)
    if vectors.dtype != np.float32 or vectors.shape != (record["rows"], dim):
        raise _drift(paths.emb, f"holds {vectors.dtype} {vectors.shape}, expected float32 ({record['rows']}, {dim}); {fix}")
    norms = np.linalg.norm(vectors, axis=1)
    if len(norms) and float(np.max(np.abs(norms - 1))) > NORM_TOLERANCE:
        raise _drift(paths.emb, f"vectors are not unit length; {fix}")
    ids = _parquet(paths.meta, fix, [ID]).column(ID).to_numpy()
    if len(ids) != record["rows"] or (len(ids) and (ids.min() != record["min_id"] or ids.max() != record["max_id"])):
        raise _drift(paths.meta, f"ids or row count differ from the completion record; {fix}")
    return ids


def _check_id_index(store: EmbeddingStore, all_ids: np.ndarray, rows: int) -> np.ndarray:
    fix = "rerun `albat embed --force`"
    if len(all_ids) != rows:
        raise _drift(store.info_path, f"records {rows} rows, the shards hold {len(all_ids)}; {fix}")
    sorted_path, order_path = store.root / "ids.sorted.npy", store.root / "ids.order.npy"
    sorted_ids, order = np.asarray(_npy(sorted_path, fix)), np.asarray(_npy(order_path, fix))
    if len(sorted_ids) != rows or len(order) != rows or not np.array_equal(all_ids[order], sorted_ids) \
            or np.any(sorted_ids[1:] < sorted_ids[:-1]):
        raise _drift(sorted_path, f"id lookup files do not match the shards; {fix}")
    if np.any(sorted_ids[1:] == sorted_ids[:-1]):
        dup = int(sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]][0])
        raise _drift(store.root, f"id {dup} appears more than once; {fix}")
    return sorted_ids


# ----- index -------------------------------------------------------------------------------------
def index_ids(index: Any) -> np.ndarray:
    """Every id an index holds: the id map of IDMap indexes, the inverted lists of IVF ones."""
    import faiss

    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    if hasattr(index, "hnsw"):  # a graph index numbers its vectors in the order they were added
        return np.arange(index.ntotal, dtype=np.int64)
    ivf = faiss.extract_index_ivf(index)
    lists = [faiss.rev_swig_ptr(ivf.invlists.get_ids(i), ivf.invlists.list_size(i)).copy()
             for i in range(ivf.nlist) if ivf.invlists.list_size(i)]
    return np.concatenate(lists).astype(np.int64) if lists else np.empty(0, np.int64)


def check_index(work: Workdir, info: dict[str, Any] | None, store_ids: np.ndarray | None) -> list[Finding]:
    import faiss

    fix = "rerun `albat index`"
    directory = work.index
    findings = list(_leftovers(directory, (".*.tmp-*", ".build-*")))
    if not (directory / INFOS_FILE).exists():
        state = "incomplete (the index file has no infos: a killed run)" if (directory / INDEX_FILE).exists() else "not built"
        return findings + [Finding("info", str(directory), f"{state}; run `albat index`")]
    if info is None or store_ids is None:
        return findings + [_unchecked(directory)]
    try:
        infos = _json(directory / INFOS_FILE, fix)
        if infos.get("store_fingerprint") != info["fingerprint"]:
            raise _drift(directory, f"built from another store (or an earlier one); delete the folder and {fix}")
        if infos.get("encoder") != info["encoder"]["name"]:
            raise _drift(directory, f"built for encoder {infos.get('encoder')!r}, the store's is "
                                    f"{info['encoder']['name']!r}; {fix}")
        ivfdata = directory / IVFDATA_FILE
        if infos.get("on_disk") and (not ivfdata.exists() or sha256_file(ivfdata) != infos.get("ivfdata_sha256")):
            raise _drift(ivfdata, f"missing, or its SHA-256 differs from {INFOS_FILE}'s; {fix}")
        try:
            index = faiss.read_index(str(directory / INDEX_FILE), faiss.IO_FLAG_ONDISK_SAME_DIR if infos.get("on_disk") else 0)
        except RuntimeError as exc:
            raise _drift(directory / INDEX_FILE, f"unreadable FAISS index ({str(exc).splitlines()[0][:120]}); {fix}") from None
        if index.d != info["dim"] or infos.get("dim") != info["dim"]:
            raise _drift(directory / INDEX_FILE, f"dimension {index.d}, the store's is {info['dim']}; {fix}")
        if index.ntotal != info["rows"] or infos.get("rows") != info["rows"]:
            raise _drift(directory / INDEX_FILE, f"holds {index.ntotal} vectors, the store {info['rows']}; {fix}")
        expected = np.arange(info["rows"], dtype=np.int64) if infos.get("labels") == LABELS else store_ids
        if not np.array_equal(np.sort(index_ids(index)), expected):
            raise _drift(directory / INDEX_FILE, f"its ids differ from the store's; {fix}")
        if infos.get("labels") != LABELS:
            raise _drift(directory, f"built by an earlier albat (labels ids, not row positions); {fix}")
        if infos.get("index_sha256") and sha256_file(directory / INDEX_FILE) != infos["index_sha256"]:
            raise _drift(directory / INDEX_FILE, f"SHA-256 differs from {INFOS_FILE}'s (changed after it was "
                                                 f"written); {fix}")
    except _Drift as exc:
        return findings + [exc.args[0]]
    return findings + [Finding("ok", str(directory), f"{infos['index_key']}: {index.ntotal} ids = the store's, dim "
                               f"{index.d}, encoder {infos['encoder']}, recall@{infos['recall_k']} "
                               f"{infos['recall_at_k']:.3f}")]


# ----- query, filter, output ----------------------------------------------------------------------
def _unchecked(where: Path) -> Finding:
    return Finding("info", str(where), "not compared with the store, which is incomplete or has drift (see above)")


def _check_ids(ids: np.ndarray, store_ids: np.ndarray, where: Path, what: str, fix: str) -> None:
    outside = _outside(ids, store_ids)
    if len(outside):
        raise _drift(where, f"{what} {int(outside[0])} is not in the store (built from another store?); {fix}")


def _stage_check(work: Workdir, stage: str, output: Path, leftovers: list[Finding], store_ids: np.ndarray | None,
                 body: Callable[[dict[str, Any] | None], str]) -> list[Finding]:
    """The scaffold of the query, filter and emit checks: `body(stage record)` raises `_Drift` or
    returns what it found sound; a missing output, a store that cannot be compared with, and a
    stage killed between publishing and its record are reported around it."""
    record = work.stage_record(stage)
    if record is None and work.record_path(stage).exists():
        return leftovers  # check_records reports the damaged record
    if not output.exists():
        if record:
            return leftovers + [Finding("drift", str(output), f"missing although _stages/{stage}.json records the "
                                        f"stage as done; rerun `albat {stage}`")]
        return leftovers + [Finding("info", str(output), f"not run yet; run `albat {stage}`")]
    if store_ids is None:
        return leftovers + [_unchecked(output)]
    for upstream, made_from in sorted(((record or {}).get("upstream") or {}).items()):
        if (work.stage_record(upstream) or {}).get("fingerprint") != made_from:
            made = {"query": "retrieved", "filter": "selected", "emit": "emitted"}.get(stage, "made")
            return leftovers + [Finding("drift", str(output), f"stale: {made} from an earlier `albat {upstream}` run; "
                                        f"rerun `albat {stage}`")]
    try:
        sound = body(record)
    except _Drift as exc:
        return leftovers + [exc.args[0]]
    if not record:
        return leftovers + [Finding("info", str(output), f"published, but the run was killed before its stage "
                                    f"record; rerun `albat {stage}` to record it")]
    recorded = record.get("outputs")
    if isinstance(recorded, dict):
        for name, digest in sorted(recorded.items()):
            path = work.record_base(stage) / name
            if not path.is_file() or sha256_file(path) != digest:
                state = "missing" if not path.is_file() else "SHA-256 differs from the one _stages/{stage}.json records"
                return leftovers + [Finding("drift", str(path), f"{state.format(stage=stage)}; rerun `albat {stage}`, "
                                            "which rebuilds it")]
    return leftovers + [Finding("ok", str(output), sound)]


def check_query(work: Workdir, info: dict[str, Any] | None, store_ids: np.ndarray | None) -> list[Finding]:
    fix = "rerun `albat query`"
    d = work.query

    def body(record: dict[str, Any] | None) -> str:
        adaptation = _parquet(d / "adaptation.parquet", fix)
        vectors = _npy(d / "adaptation.npy", fix)
        if vectors.shape != (adaptation.num_rows, info["dim"]):
            raise _drift(d / "adaptation.npy", f"shape {vectors.shape}, expected ({adaptation.num_rows}, {info['dim']}): "
                                               f"not the store's encoder; {fix}")
        tables = {name: _parquet(d / f"{name}.parquet", fix) for name in ("candidate_pairs", "candidates", "blocked")}
        for name, column in (("candidate_pairs", "candidate_id"), ("candidates", "candidate_id"), ("blocked", "id")):
            _check_ids(tables[name].column(column).to_numpy(), store_ids, d / f"{name}.parquet", "id", fix)
        counts = {"adaptation": adaptation.num_rows, "pairs": tables["candidate_pairs"].num_rows,
                  "candidates": tables["candidates"].num_rows, "blocked": tables["blocked"].num_rows}
        if record and any(record["summary"].get(k) != v for k, v in counts.items()):
            raise _drift(d, f"tables hold {counts}, the stage record {record['summary']}; {fix}")
        return (f"{counts['adaptation']} adaptation examples, {counts['pairs']} pairs, {counts['candidates']} "
                f"candidates, {counts['blocked']} blocked; every id in the store")

    leftovers = list(_leftovers(work.task_root, (".query.staging-*", ".query.old-*")))
    return _stage_check(work, "query", d / "candidates.parquet", leftovers, store_ids, body)


def check_filter(work: Workdir, store_ids: np.ndarray | None) -> list[Finding]:
    fix = "rerun `albat filter`"
    path = work.filter / "selection.parquet"

    def body(record: dict[str, Any] | None) -> str:
        selection = _parquet(path, fix)
        ids = selection.column("id").to_numpy()
        keep = selection.column("keep").to_numpy(zero_copy_only=False)
        kept = int(keep.sum())
        _check_ids(ids, store_ids, path, "id", fix)
        if len(np.unique(ids)) != len(ids):
            raise _drift(path, f"an id appears twice; {fix}")
        blocked_path = work.query / "blocked.parquet"
        if blocked_path.exists() and np.isin(ids[keep], _parquet(blocked_path, fix).column("id").to_numpy()).any():
            raise _drift(path, f"keeps an id the query stage blocked (a leak); {fix}")
        summary = (record or {}).get("summary")
        if summary and (kept != summary["kept"] or len(ids) != summary["considered"] or kept > summary["budget"]):
            raise _drift(path, f"{kept} kept of {len(ids)}, the stage record {summary}; {fix}")
        return f"{kept} kept of {len(ids)}; ids unique, in the store, none blocked"

    return _stage_check(work, "filter", path, list(_leftovers(work.filter, (".*.tmp-*",))), store_ids, body)


def check_mix(work: Workdir, store_ids: np.ndarray | None) -> list[Finding]:
    """Only where a mix was asked for: weights on the simplex, one group per kept row."""
    if not work.mix.exists() and work.stage_record("mix") is None:
        return []
    fix = "rerun `albat mix`"
    path = work.mix / "weights.parquet"

    def body(record: dict[str, Any] | None) -> str:
        weights = _parquet(path, fix, ["group", "rows", "weight"])
        groups = _parquet(work.mix / "groups.parquet", fix, ["id", "group"])
        w = weights.column("weight").to_numpy()
        if not (np.all(np.isfinite(w)) and np.all(w >= 0) and abs(w.sum() - 1.0) < 1e-6):
            raise _drift(path, f"weights are not on the simplex (sum {w.sum():.6g}); {fix}")
        assigned = groups.column("group").to_numpy()
        counts = np.bincount(assigned, minlength=len(w)) if len(assigned) else np.zeros(len(w), int)
        if len(counts) != len(w) or not np.array_equal(counts, weights.column("rows").to_numpy()):
            raise _drift(path, f"per-group row counts differ from groups.parquet; {fix}")
        _check_ids(groups.column("id").to_numpy(), store_ids, work.mix / "groups.parquet", "id", fix)
        return f"{len(w)} groups over {len(assigned)} rows; weights on the simplex"

    return _stage_check(work, "mix", path, list(_leftovers(work.mix, (".*.tmp-*",))), store_ids, body)


def check_output(work: Workdir, info: dict[str, Any] | None, store_ids: np.ndarray | None) -> list[Finding]:
    fix = "rerun `albat emit`"
    out = work.output

    def body(record: dict[str, Any] | None) -> str:
        if not (out / MANIFEST).exists():
            raise _drift(out, f"no {MANIFEST}: not a set albat published; {fix}")
        manifest = _json(out / MANIFEST, fix)
        named = {s["path"] for s in manifest["shards"]}
        layout = int(manifest.get("format_version", 1)) >= 2
        if layout and not (out / SUCCESS).is_file():
            raise _drift(out / SUCCESS, f"missing: the set was not published whole; {fix}")
        found = ([p for p in (out / DATA).iterdir() if not p.name.startswith((".", "_"))] if layout and (out / DATA).is_dir()
                 else [Path(p) for p in sorted(glob.glob(shard_glob(out)))])
        extra = sorted(str(p.relative_to(out)) for p in found if str(p.relative_to(out)) not in named)
        if extra:
            raise _drift(out / extra[0], f"not in the manifest, yet readers of {out / DATA if layout else out} would "
                                         f"read it; delete it or {fix}")
        if layout:
            _same_checksum(out / CARD, manifest["card_sha256"], fix)
        tables = []
        for shard in manifest["shards"]:
            _same_checksum(out / shard["path"], shard["sha256"], fix)
            tables.append(_parquet(out / shard["path"], fix, ["albat_id", "albat_is_adaptation"]))
            if tables[-1].num_rows != shard["rows"]:
                raise _drift(out / shard["path"], f"{tables[-1].num_rows} rows, the manifest says {shard['rows']}; {fix}")
        rows = pa.concat_tables(tables)
        is_adapt = rows.column("albat_is_adaptation").to_numpy(zero_copy_only=False)
        # filtered in Arrow: adaptation rows' null ids would turn the column into float64 (ids beyond 2**53 blur)
        ids = rows.filter(pa.array(~is_adapt)).column("albat_id").cast(pa.int64()).to_numpy(zero_copy_only=False)
        counts = manifest["counts"]
        if sum(s["rows"] for s in manifest["shards"]) != manifest["rows"] or len(ids) != counts["selected"] \
                or int(is_adapt.sum()) != counts["adaptation"]:
            raise _drift(out / MANIFEST, f"counts differ from the shards ({len(ids)} selected, {int(is_adapt.sum())} "
                                         f"adaptation rows); {fix}")
        if len(np.unique(ids)) != len(ids):
            raise _drift(out, f"a selected id appears twice; {fix}")
        _check_ids(ids, store_ids, out, "albat_id", fix)
        name = str(info["encoder"]["name"])  # the manifest names a local encoder relative to the work directory
        names = {name, os.path.relpath(name, os.path.abspath(work.root))} if os.path.isabs(name) else {name}
        if manifest["encoder"]["name"] not in names or counts["corpus_rows"] != info["rows"]:
            raise _drift(out / MANIFEST, f"emitted from another store (encoder {manifest['encoder']['name']!r}, "
                                         f"{counts['corpus_rows']} rows); {fix}")
        for stage, fingerprint in manifest.get("stages", {}).items():
            if (work.stage_record(stage) or {}).get("fingerprint") != fingerprint:
                raise _drift(out, f"stale: emitted from an earlier `albat {stage}` run; {fix}")
        selection = work.filter / "selection.parquet"
        recorded = (manifest.get("sources") or {}).get("selection_sha256")
        if recorded and selection.exists() and sha256_file(selection) != recorded:
            raise _drift(out, f"stale: older than {selection}, which changed after this set was emitted; {fix}")
        if selection.exists():
            table = _parquet(selection, fix, ["id", "keep", "selection_rank"])
            expected = table.filter(table.column("keep")).sort_by("selection_rank").column("id").to_numpy()
            if not np.array_equal(ids, expected):
                raise _drift(out, f"its rows are not the selection's kept ids in order; {fix}")
        return (f"{len(manifest['shards'])} shards, {manifest['rows']} rows ({counts['selected']} selected + "
                f"{counts['adaptation']} adaptation); checksums match the manifest, ids unique and = the selection")

    leftovers = list(_leftovers(out.parent, (f".{out.name}.staging-*", f".{out.name}.old-*")))
    return _stage_check(work, "emit", out, leftovers, store_ids, body)


def check_records(work: Workdir, stages: tuple[str, ...] = ("index", "query", "filter", "emit")) -> list[Finding]:
    """Completion records that do not parse as one (truncated, edited): the stage is not complete."""
    findings = []
    for stage in stages:
        path = work.record_path(stage)
        if path.exists() and work.stage_record(stage) is None:
            findings.append(Finding("drift", str(path), f"damaged (does not parse as a completion record); rerun "
                                    f"`albat {stage}`, which rebuilds its output and the record"))
    return findings


def require_workdir(work: Workdir) -> None:
    if not work.root.is_dir():
        raise AlbatError(f"{work.root}: no such work directory; pass the --work of a run")
    if not any(folder.exists() for folder in (work.store, work.index, work.tasks, work.query, work.filter, work.stages)):
        raise AlbatError(f"{work.root}: not an albat work directory (no store, index, tasks, query, filter or _stages "
                         "folder); pass the --work of a run")


def _guarded(where: Path, stage: str, check: Callable[[], Any], default: Any) -> tuple[Any, list[Finding]]:
    """Run one check; damage it did not foresee (a missing key, a wrong type) is drift, not a crash."""
    try:
        return check(), []
    except Exception as exc:  # noqa: BLE001 - verify reports, it never crashes
        message = f"damaged ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else 'no detail'})"
        return default, [Finding("drift", str(where), f"{message}; rerun `albat {stage}`, which rebuilds it")]


def verify_workdir(work: Workdir, tasks: list[str] | None = None) -> list[Finding]:
    """Every check, store first (the others compare against it), then each task's query, filter and
    output: `tasks` (default: every task of the work directory, or `default` when there is none)."""
    require_workdir(work)
    (findings, info, store_ids), damage = _guarded(work.store, "embed --force", lambda: check_store(EmbeddingStore(work.store)),
                                                   ([], None, None))
    findings += damage + check_records(work, ("index",))
    found, damage = _guarded(work.index, "index", lambda: check_index(work, info, store_ids), [])
    findings += found + damage
    for task in tasks if tasks is not None else (work.task_names() or [work.task]):
        t = work.for_task(task)
        findings += check_records(t, ("query", "filter", "mix", "emit"))
        for where, stage, check in ((t.query, "query", lambda: check_query(t, info, store_ids)),
                                    (t.filter, "filter", lambda: check_filter(t, store_ids)),
                                    (t.mix, "mix", lambda: check_mix(t, store_ids)),
                                    (t.output, "emit", lambda: check_output(t, info, store_ids))):
            found, damage = _guarded(where, stage, check, [])
            findings += found + damage
    return findings
