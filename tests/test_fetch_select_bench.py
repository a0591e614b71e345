"""scripts/fetch_select_bench.py's held-out-only sources: The Devil's Dictionary read from a hand-made dictd
dictionary (headword, part of speech, notice entries), and the split rule of a held-out-only domain."""
from __future__ import annotations

import gzip
import importlib.util

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def fetch():
    spec = importlib.util.spec_from_file_location("fetch_select_bench", REPO / "scripts" / "fetch_select_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def b64(n: int, alphabet: str) -> str:
    out = ""
    while True:
        out = alphabet[n % 64] + out
        n //= 64
        if not n:
            return out


def write_dictd(root, name: str, entries: list[tuple[str, str]], alphabet: str) -> None:
    """A dictd dictionary: NAME.dict.dz (gzip) and NAME.index (word, base-64 offset, base-64 length)."""
    share = root / "usr/share/dictd"
    share.mkdir(parents=True)
    data, index = b"", []
    for word, text in entries:
        raw = text.encode()
        index.append(f"{word}\t{b64(len(data), alphabet)}\t{b64(len(raw), alphabet)}")
        data += raw
    (share / f"{name}.dict.dz").write_bytes(gzip.compress(data))
    (share / f"{name}.index").write_text("\n".join(index) + "\n")


def test_devil_rows_take_the_headword_and_the_definition_and_skip_notices(fetch, tmp_path) -> None:
    write_dictd(tmp_path, "devil", [
        ("00databaseurl", "http://wiretap.area.com/Gopher/Library/Classic/devils.txt\n"),
        ("00databaseinfo", "The original data is available from:\n  somewhere\n"),
        ("ABSTAINER", "ABSTAINER, n.  A weak person who yields to the temptation of denying\nhimself a pleasure.\n\n"),
        ("ABRIDGE", "ABRIDGE, v.t.  To shorten.\n\n    When in the course of human events\n"),
        ("ABRACADABRA", "ABRACADABRA.\n\n    By _Abracadabra_ we signify\n"),
        ("MONARCHICAL GOVERNMENT", "MONARCHICAL GOVERNMENT, n.  Government.\n"),
        ("EMPTY", "EMPTY, n.\n"),
    ], fetch.B64)
    rows = fetch.read_devil(tmp_path, max_chars=30)
    assert [(r["query"], r["text"]) for r in rows] == [
        ("ABSTAINER", "A weak person who yields to"),  # cut at a word boundary, part of speech dropped
        ("ABRIDGE", "To shorten. When in the course"),
        ("ABRACADABRA", "By _Abracadabra_ we signify"),
        ("MONARCHICAL GOVERNMENT", "Government."),
    ]
    assert {r["source"] for r in rows} == {"devil"} and all(r["id"] >= fetch.ID_BASE["devil"] for r in rows)


def test_a_held_out_only_domain_keeps_its_adaptation_size_and_takes_what_is_left_for_test(fetch, monkeypatch) -> None:
    monkeypatch.setattr(fetch, "MIN_HELD_OUT_TEST", 10)
    rows = [dict(id=i, query=f"q{i}", text=f"t{i}", source="devil", label="devil") for i in range(30)]
    domains = [("devil", "devil", None)]
    adapt, test = fetch.hold_out(rows, 8, 100, 0, domains, pooled=False)["devil"]
    assert len(adapt) == 8 and len(test) == 22 and not {r["id"] for r in adapt} & {r["id"] for r in test}
    assert fetch.hold_out(rows, 8, 100, 0, domains, pooled=False)["devil"] == (adapt, test)  # seeded
    assert len(fetch.hold_out(rows, 8, 12, 0, domains, pooled=False)["devil"][1]) == 12  # n_test caps it
    with pytest.raises(fetch.BuildError, match="too few"):
        fetch.hold_out(rows, 8, 100, 0, domains)  # a pooled domain needs as many rows again for the pool
    with pytest.raises(fetch.BuildError, match="lower --n-adapt"):
        fetch.hold_out(rows[:17], 8, 100, 0, domains, pooled=False)  # 8 + 10 rows needed
