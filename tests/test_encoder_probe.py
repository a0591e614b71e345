"""`--backend auto --dtype auto`: the choice logic on fake timings and accuracies, the backends
against each other, and a real probe inside `albat embed` on a tiny corpus."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import SmallWiki, albat, write_config

from albat.pipeline import encoder_probe as probe
from albat.pipeline.encoder_probe import ProbeRow
from albat.pipeline.encoders import TextEncoder, check_same_encoder
from albat.stores.errors import AlbatError


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALBAT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "albat-cache"))


# --- pure choice logic ---------------------------------------------------------------------------

def test_cpu_flags_and_native_bf16() -> None:
    info = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n"
    assert probe.cpu_flags(info) == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16"}
    assert probe.native_bf16(probe.cpu_flags(info))
    assert not probe.native_bf16({"avx2", "avx512f", "fma"})  # AVX-512 alone emulates bf16: slower
    assert probe.native_bf16({"amx_bf16"}) and probe.native_bf16({"fp", "asimd", "bf16"})
    assert probe.cpu_flags("no flags here") == set()


def test_candidates_follow_the_hardware() -> None:
    avx2 = probe.candidates("cpu", bf16_native=False, cuda_bf16=False, onnx=True)
    assert avx2[0] == probe.REFERENCE and ("torch", "bfloat16") not in avx2
    assert ("onnx", "float32") in avx2 and ("torch", "int8") in avx2
    assert ("torch", "bfloat16") in probe.candidates("cpu", True, False, True)
    assert all(b != "onnx" for b, _ in probe.candidates("cpu", True, False, onnx=False))
    gpu = probe.candidates("cuda", bf16_native=False, cuda_bf16=True, onnx=True)
    assert gpu == [("torch", "float32"), ("torch", "float16"), ("torch", "bfloat16")]  # no int8, no CPU onnx
    assert ("torch", "bfloat16") not in probe.candidates("cuda:0", True, cuda_bf16=False, onnx=True)
    assert probe.candidates("cpu", True, False, True, backend="onnx") == [("onnx", "float32"), ("onnx", "int8")]
    assert probe.candidates("cpu", True, False, True, dtype="int8") == [("torch", "int8"), ("onnx", "int8")]


def _row(backend: str, dtype: str, speed: float | None, cosine: float, overlap: float = 1.0) -> ProbeRow:
    row = ProbeRow(backend, dtype, rows_per_second=speed, min_cosine=cosine, knn_overlap=overlap)
    row.passed = cosine >= probe.MIN_COSINE and overlap >= probe.MIN_OVERLAP
    return row


def test_the_fastest_passing_runtime_wins() -> None:
    rows = [_row("torch", "float32", 20, 1.0), _row("torch", "bfloat16", 45, 0.9999, 0.995),
            _row("torch", "int8", 30, 0.9995), _row("onnx", "float32", 25, 1.0)]
    assert probe.choose(rows) == ("torch", "bfloat16")


def test_a_runtime_failing_the_cosine_bar_is_never_chosen() -> None:
    rows = [_row("torch", "float32", 20, 1.0), _row("onnx", "int8", 90, 0.917),
            _row("torch", "int8", 60, 0.9995, overlap=0.97), _row("onnx", "float32", 22, 0.99999)]
    assert probe.choose(rows) == ("onnx", "float32")
    assert probe.choose([_row("torch", "float32", 20, 1.0), _row("onnx", "int8", 90, 0.5)]) == probe.REFERENCE
    assert probe.choose([]) == probe.REFERENCE


def test_agreement_by_hand() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert probe.agreement(x, x) == (pytest.approx(1.0), 1.0)
    flipped = x.copy()
    flipped[3] = -flipped[3]
    cosine, overlap = probe.agreement(x, flipped)
    assert cosine == pytest.approx(-1.0) and overlap < 1.0
    assert probe.agreement(x[:1], x[:1])[1] == 1.0  # one text: no neighbours to compare


class VirtualClock:
    """The probe's timer in these tests: fake encoders spend virtual seconds on it instead of sleeping, so the
    timings are exact and a loaded machine (CI's parallel test processes) cannot reorder them."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualClock:
    virtual = VirtualClock()
    monkeypatch.setattr(probe, "time", SimpleNamespace(perf_counter=virtual.perf_counter))
    return virtual


class FakeEncoder:
    """Encodes by a fixed rotation-free perturbation at a fixed cost per text (spent on the virtual clock)."""

    batch_size = 8

    def __init__(self, seconds_per_text: float, noise: float, fail: bool = False, clock: VirtualClock | None = None):
        self.seconds, self.noise, self.fail, self.clock = seconds_per_text, noise, fail, clock

    def encode(self, texts: list[str]) -> np.ndarray:
        if self.fail:
            raise RuntimeError("this runtime cannot load here")
        if self.clock is not None:
            self.clock.spend(self.seconds * len(texts))
        base = np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=16) for t in texts])
        base += self.noise * np.random.default_rng(len(texts)).normal(size=base.shape)
        return base / np.linalg.norm(base, axis=1, keepdims=True)


def test_run_probe_times_judges_and_stops_the_slow(clock: VirtualClock) -> None:
    texts = [f"text number {i}" for i in range(32)]
    fakes = {("torch", "float32"): FakeEncoder(0.004, 0.0, clock=clock),
             ("torch", "int8"): FakeEncoder(0.0005, 0.3, clock=clock),
             ("onnx", "float32"): FakeEncoder(0.001, 0.0, clock=clock),
             ("torch", "bfloat16"): FakeEncoder(0.02, 0.0, clock=clock),
             ("onnx", "int8"): FakeEncoder(0.0, 0.0, fail=True)}
    choice, rows = probe.run_probe(texts, lambda b, d: fakes[(b, d)], list(fakes))
    by_key = {r.key: r for r in rows}
    assert choice == ("onnx", "float32")  # int8 is faster but fails the bar, and is stopped at its first batch
    assert not by_key[("torch", "int8")].passed and by_key[("torch", "int8")].note.startswith("fails the bar: cosine")
    slow = by_key[("torch", "bfloat16")]  # 5x slower than onnx: stopped after the first round
    assert not slow.passed and slow.note.startswith("stopped after 8 texts") and slow.rows_per_second < 100
    assert by_key[("onnx", "int8")].note.startswith("unavailable")
    table = probe.probe_table(choice, rows, len(texts), seed=3)
    assert table["choice"] == {"backend": "onnx", "dtype": "float32"} and table["seed"] == 3
    assert json.loads(json.dumps(table)) == table


class DriftingLoad:
    """Two equal-quality runtimes on a machine whose load grows call by call: B is 1.25x faster."""

    batch_size = 4

    def __init__(self, calls: list[int], cost: float, clock: VirtualClock):
        self.calls, self.cost, self.clock = calls, cost, clock

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls[0] += 1
        self.clock.spend(self.cost * len(texts) * (1 + 0.5 * self.calls[0]))
        return FakeEncoder(0, 0).encode(texts)


def test_interleaved_rounds_see_the_same_drifting_load(clock: VirtualClock) -> None:
    calls = [0]
    fakes = {("torch", "float32"): DriftingLoad(calls, 0.001, clock),
             ("onnx", "float32"): DriftingLoad(calls, 0.0008, clock)}
    texts = [f"t{i}" for i in range(24)]
    choice, rows = probe.run_probe(texts, lambda b, d: fakes[(b, d)], list(fakes))
    assert choice == ("onnx", "float32")  # timed one after the other, the later (faster) one would look slower
    assert all(r.passed for r in rows)


# --- backends ------------------------------------------------------------------------------------

TEXTS = ["a short one", "a much longer sentence about prime numbers and their distribution", "mid length text",
         "graphs, trees and the shortest path between two vertices", "x"]


def test_torch_backend_matches_sentence_transformers_encode(tiny_encoder: str) -> None:
    encoder = TextEncoder(name=tiny_encoder, device="cpu")
    plain = encoder.model.model.encode(TEXTS, convert_to_numpy=True)
    plain = plain / np.linalg.norm(plain, axis=1, keepdims=True)
    assert np.allclose(encoder.encode(TEXTS), plain, atol=1e-5)
    assert encoder.stats["forward_seconds"] > 0 and encoder.stats["rows"] == len(TEXTS)


def test_onnx_backend_agrees_with_torch_and_exports_once(tiny_encoder: str) -> None:
    pytest.importorskip("onnxruntime")
    from albat.pipeline.encoder_backends import export_onnx

    reference = TextEncoder(name=tiny_encoder, device="cpu").encode(TEXTS)
    onnx = TextEncoder(name=tiny_encoder, device="cpu", backend="onnx").encode(TEXTS)
    assert np.allclose(onnx, reference, atol=1e-4)
    folder = export_onnx(tiny_encoder)
    stamp = (folder / "model.onnx").stat().st_mtime_ns
    assert export_onnx(tiny_encoder) == folder and (folder / "model.onnx").stat().st_mtime_ns == stamp
    int8 = TextEncoder(name=tiny_encoder, device="cpu", backend="onnx", dtype="int8").encode(TEXTS)
    assert int8.shape == reference.shape and np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)


def test_torch_int8_runs_and_stays_close(tiny_encoder: str) -> None:
    reference = TextEncoder(name=tiny_encoder, device="cpu").encode(TEXTS)
    int8 = TextEncoder(name=tiny_encoder, device="cpu", dtype="int8").encode(TEXTS)
    cosine = np.einsum("ij,ij->i", reference, int8)
    assert cosine.min() > 0.95 and not np.allclose(int8, reference, atol=1e-7)  # quantised, not the same model


def test_identity_check_accepts_another_runtime_of_the_same_weights(tiny_encoder: str) -> None:
    pytest.importorskip("onnxruntime")
    identity = TextEncoder(name=tiny_encoder, device="cpu").identity()
    assert identity["backend"] == "torch" and identity["dtype"] == "float32"
    check_same_encoder(identity, TextEncoder(name=tiny_encoder, device="cpu", backend="onnx"), "here")
    with pytest.raises(AlbatError, match="embedded with"):
        check_same_encoder(identity, TextEncoder(name="all-MiniLM-L6-v2", device="cpu", backend="onnx"), "here")


def test_onnx_refuses_models_it_cannot_export(tmp_path: Path) -> None:
    from albat.pipeline.encoder_backends import OnnxBackend

    with pytest.raises(AlbatError, match="local model directory"):
        OnnxBackend("some-org/not-a-directory", "float32", None, "cpu")
    with pytest.raises(AlbatError, match="float32 or int8"):
        OnnxBackend(str(tmp_path), "bfloat16", None, "cpu")


def test_pooling_by_hand() -> None:
    from albat.pipeline.encoder_backends import pool

    hidden = np.array([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]]])
    mask = np.array([[1, 1, 0]])
    assert np.allclose(pool(hidden, mask, "mean"), [[2.0, 1.0]])
    assert np.allclose(pool(hidden, mask, "cls"), [[1.0, 0.0]])
    assert np.allclose(pool(hidden, mask, "max"), [[3.0, 2.0]])
    assert np.allclose(pool(hidden, mask, "lasttoken"), [[3.0, 2.0]])


# --- the real probe inside `albat embed` ---------------------------------------------------------

def _embed_config(tmp: Path, wiki: SmallWiki, encoder: str, extra: str = "") -> Path:
    return write_config(tmp / "run.toml", f"""
work = "work"
[embed]
input = ["{wiki.corpus}"]
id_column = "id"
encoder = "{encoder}"
threads = 1
probe_rows = 48
{extra}
[query]
adaptation = ["{wiki.adaptation}"]
k = 4
dedup_threshold = 0.99999
""")


def test_embed_probes_records_and_query_reuses_the_choice(tmp_path: Path, small_wiki: SmallWiki, tiny_encoder: str) -> None:
    config = _embed_config(tmp_path, small_wiki, tiny_encoder)
    assert albat("embed", "--config", config, "--quiet") == 0
    info = json.loads((tmp_path / "work" / "store" / "store.json").read_text())
    table = info["encoder_probe"]
    rows = {(r["backend"], r["dtype"]): r for r in table["rows"]}
    assert rows[("torch", "float32")]["passed"] and rows[("torch", "float32")]["rows_per_second"] > 0
    assert table["sample_texts"] == 48 and table["min_cosine"] == probe.MIN_COSINE
    choice = (table["choice"]["backend"], table["choice"]["dtype"])
    assert rows[choice]["passed"]
    assert (info["encoder"]["backend"], info["encoder"]["dtype"]) == choice
    faster = [r for r in table["rows"] if r["passed"] and r["rows_per_second"] and
              r["rows_per_second"] > rows[choice]["rows_per_second"]]
    assert not faster  # nothing that passed was faster than the choice
    assert albat("index", "--config", config, "--quiet") == 0
    assert albat("query", "--config", config, "--quiet") == 0  # the identity check accepts the store's runtime


def test_an_explicit_dtype_or_backend_skips_the_probe(tmp_path: Path, small_wiki: SmallWiki, tiny_encoder: str) -> None:
    config = _embed_config(tmp_path, small_wiki, tiny_encoder, 'dtype = "int8"')
    assert albat("embed", "--config", config, "--quiet") == 0
    info = json.loads((tmp_path / "work" / "store" / "store.json").read_text())
    assert info["encoder_probe"] is None
    assert (info["encoder"]["backend"], info["encoder"]["dtype"]) == ("torch", "int8")


def test_the_probe_is_cached_per_machine_and_timed_again_on_request(tmp_path: Path, small_wiki: SmallWiki,
                                                                       tiny_encoder: str, monkeypatch) -> None:
    """The first embed times the runtimes and keeps the table in the cache; a later process (the
    per-process memo cleared) reuses it and says so; probe_cache=false or a damaged file times again."""
    from albat.pipeline import embed as embed_stage

    monkeypatch.setenv("ALBAT_CACHE_DIR", str(tmp_path / "cache"))

    def embed(name: str, extra: str = "") -> dict:
        monkeypatch.setattr(embed_stage, "_PROBED", {})
        root = tmp_path / name
        root.mkdir()
        assert albat("embed", "--config", _embed_config(root, small_wiki, tiny_encoder, extra), "--quiet") == 0
        return json.loads((root / "work" / "store" / "store.json").read_text())["encoder_probe"]

    first = embed("a")
    files = list((tmp_path / "cache" / "encoder-probe").glob("*.json"))
    assert "cached" not in first and len(files) == 1
    assert json.loads(files[0].read_text())["rows"] == first["rows"]
    second = embed("b")
    assert second["cached"] == str(files[0]) and second["rows"] == first["rows"]  # same timings: not measured again
    third = embed("c", "probe_cache = false")
    assert "cached" not in third and json.loads(files[0].read_text())["rows"] == third["rows"]  # measured, kept
    files[0].write_text("{not json")
    fourth = embed("d")
    assert "cached" not in fourth and json.loads(files[0].read_text())["rows"] == fourth["rows"]
    other = embed("e", "max_seq_length = 32")  # other settings, another key
    assert "cached" not in other and len(list(files[0].parent.glob("*.json"))) == 2


def test_probe_cache_helpers_by_hand(tmp_path: Path) -> None:
    assert probe.cache_key({"a": 1, "b": [2]}) == probe.cache_key({"b": [2], "a": 1}) != probe.cache_key({"a": 2})
    assert probe.cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t: avx2\n") == "AMD EPYC 9R14"
    assert probe.cpu_model("") == ""
    path = tmp_path / "t.json"
    assert probe.load_cached(path) is None  # missing
    path.write_text('{"choice": {"backend": "torch"}}')
    assert probe.load_cached(path) is None  # incomplete
    path.write_text('{"choice": {"backend": "torch", "dtype": "float32"}, "rows": []}')
    assert probe.load_cached(path)["choice"]["dtype"] == "float32"
