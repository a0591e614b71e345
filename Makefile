# albat: `make demo` runs the whole pipeline on the bundled default data; `make test` runs the tests.
# Both install what they need first (`make setup`: .venv, CPU-only torch pinned by constraints.txt).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ALBAT := $(VENV)/bin/albat
CONFIG ?= configs/demo.toml
WORK ?= work/demo
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup data test test-faults demo embed index query filter emit run bench bench-embed bench-filter bench-index bench-scale bench-select bench-lm clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,ray]'
	touch $@

setup: $(VENV)/.installed

data/wiki/backbone.parquet data/wiki/demo.parquet &: scripts/fetch_wiki.py | $(VENV)/.installed
	$(PY) scripts/fetch_wiki.py --out data/wiki

data: data/wiki/backbone.parquet data/wiki/demo.parquet

# The data-selection benchmark (WordNet, FOLDOC and wiki pairs, held-out domains): scripts/fetch_select_bench.py
.PHONY: data-select
data/select/pool.parquet: scripts/fetch_select_bench.py data/wiki/backbone.parquet | $(VENV)/.installed
	$(PY) scripts/fetch_select_bench.py --out data/select --wiki data/wiki --force

data-select: data/select/pool.parquet

test: setup data
	$(PY) -m pytest -q tests

# The SIGKILL suite alone (it is part of `make test` too, at its defaults): KILLS seeded kill points
# per stage (plus fixed ones mid-write and around the final rename), drawn with SEED.
KILLS ?= 20
SEED ?= 0
test-faults: setup data
	ALBAT_FAULT_KILLS=$(KILLS) ALBAT_FAULT_SEED=$(SEED) $(PY) -m pytest -q tests/test_faults.py tests/test_resume.py

demo: setup data
	$(ALBAT) run --config $(CONFIG)
	$(ALBAT) sql $(WORK) "SELECT albat_method, albat_is_adaptation, count(*) AS n_rows, round(sum(albat_weight), 2) AS total_weight, left(min(text), 40) AS example FROM shards GROUP BY ALL ORDER BY ALL"
	$(ALBAT) sql $(WORK) "SELECT albat_query AS adaptation_example, title, topic, round(albat_score, 3) AS similarity FROM shards WHERE NOT albat_is_adaptation ORDER BY albat_score DESC LIMIT 10"

embed index query filter emit run: setup data
	$(ALBAT) $@ --config $(CONFIG)

bench: bench-embed bench-filter bench-index bench-scale bench-select bench-lm

bench-embed: setup data
	$(PY) -m benchmarks.bench_embed --out BENCHMARKS.md

# The filter stage's time per candidate for every method, on the demo work directory.
bench-filter: setup data
	$(ALBAT) run --config $(CONFIG) --quiet
	$(PY) -m benchmarks.bench_filter --config $(CONFIG) --work $(WORK) --out BENCHMARKS.md

bench-index: setup data
	$(ALBAT) embed --config $(CONFIG) --quiet
	$(PY) -m benchmarks.bench_index --store $(WORK)/store --out BENCHMARKS.md

bench-scale: setup
	$(PY) -m benchmarks.bench_scale --out BENCHMARKS.md

$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,bench]'
	touch $@

# Selection quality: every method, one judge, held-out target retrieval (about 1 hour on 2 cores)
bench-select: setup data-select $(VENV)/.bench
	$(PY) -m benchmarks.bench_select --out BENCHMARKS.md

# The language-model track: LoRA on adaptation texts + each method's selection, held-out perplexity.
# Pre-trains the benchmark's own backbone LM once (cached by content hash); MODEL=DIR uses a real one.
MODEL ?=
bench-lm: setup data-select $(VENV)/.bench
	$(PY) -m benchmarks.bench_lm --out BENCHMARKS.md $(if $(MODEL),--model $(MODEL))

clean:
	rm -rf work
