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

.PHONY: setup data data-images demo-image test test-faults demo embed index query filter mix emit run bench bench-embed bench-filter bench-index bench-scale bench-select bench-lm bench-lm-quick bench-judge-cut bench-image clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,ray,image]'
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

# `make test` draws 6 seeded kill points per stage in the SIGKILL suite (plus its fixed ones), to keep the
# whole suite within CI's budget; `make test-faults` runs that suite alone at KILLS (20 by default).
# Test files run in TEST_WORKERS processes (pytest-xdist; auto: one per CPU, 1: one process, no xdist);
# a file stays in one process, so its module fixtures are built once.
TEST_KILLS ?= 6
TEST_WORKERS ?= auto
test: setup data
	ALBAT_FAULT_KILLS=$(TEST_KILLS) $(PY) -m pytest -q $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) tests

# The SIGKILL suite alone (it is part of `make test` too, at its defaults): KILLS seeded kill points
# per stage (plus fixed ones mid-write and around the final rename), drawn with SEED.
KILLS ?= 20
SEED ?= 0
test-faults: setup data
	ALBAT_FAULT_KILLS=$(KILLS) ALBAT_FAULT_SEED=$(SEED) $(PY) -m pytest -q tests/test_faults.py tests/test_resume.py

demo: setup data
	$(ALBAT) run --config $(CONFIG)
	$(ALBAT) report $(WORK)
	$(ALBAT) sql $(WORK) "SELECT albat_method, albat_is_adaptation, count(*) AS n_rows, round(sum(albat_weight), 2) AS total_weight, left(min(text), 40) AS example FROM shards GROUP BY ALL ORDER BY ALL"
	$(ALBAT) sql $(WORK) "SELECT albat_query AS adaptation_example, title, topic, round(albat_score, 3) AS score FROM shards WHERE NOT albat_is_adaptation ORDER BY albat_score DESC LIMIT 10"

# The image track: real image-caption data from Debian packages (scripts/fetch_images.py, as root:
# apt-get download + dpkg-deb -x), the small CLIP pre-trained on it (cached by content hash;
# CLIP_MODEL=CONFIG.json CLIP_PRETRAINED=FILE use a real one), the whole flow, and a contact sheet.
data/images/summary.json: scripts/fetch_images.py | $(VENV)/.installed
	$(PY) scripts/fetch_images.py --out data/images

data-images: data/images/summary.json

CLIP_EPOCHS ?= 4
CLIP_MODEL ?=
CLIP_PRETRAINED ?=
demo-image: setup data-images
	$(eval CLIP_DIR := $(if $(CLIP_MODEL),,$(shell $(PY) scripts/pretrain_clip.py --pool data/images/pool --out work/clip --epochs $(CLIP_EPOCHS))))
	$(ALBAT) run --config configs/demo-image.toml --image-model $(or $(CLIP_MODEL),$(CLIP_DIR)/albat-clip-small.json) $(if $(or $(CLIP_PRETRAINED),$(CLIP_DIR)),--image-pretrained $(or $(CLIP_PRETRAINED),$(CLIP_DIR)/checkpoint.pt))
	$(PY) scripts/contact_sheet.py work/demo-image --out work/demo-image/contact_sheet.png
	$(ALBAT) sql work/demo-image "SELECT source, category, count(*) AS n FROM shards WHERE NOT albat_is_adaptation GROUP BY ALL ORDER BY n DESC LIMIT 8"

embed index query filter mix emit run: setup data
	$(ALBAT) $@ --config $(CONFIG)

bench: bench-embed bench-filter bench-index bench-scale bench-select bench-lm bench-judge-cut bench-image

bench-embed: setup data
	$(PY) -m benchmarks.bench_embed --out BENCHMARKS.md

# The filter stage's time per candidate for every method, on the demo work directory.
bench-filter: setup data
	$(ALBAT) run --config $(CONFIG) --quiet
	$(PY) -m benchmarks.bench_filter --config $(CONFIG) --work $(WORK) --out BENCHMARKS.md

bench-index: setup data
	$(ALBAT) embed --config $(CONFIG) --quiet
	$(PY) -m benchmarks.bench_index --store $(WORK)/store --out BENCHMARKS.md

# autofaiss (the index comparison) in its own venv: it pins numpy<2, which albat's .venv must not get
.venv-autofaiss/.installed: constraints.txt
	$(PYTHON) -m venv .venv-autofaiss
	.venv-autofaiss/bin/python -m pip install --quiet -c constraints.txt 'autofaiss==2.18.0' 'pyarrow<16'
	touch $@

bench-scale: setup data data-select .venv-autofaiss/.installed
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

# The same track reduced to what runs in a few hours on 2 cores (README): a fifth of the pool, n_A = 16,
# m = 8·n_A, all six targets, 3 seeds, 100 steps, the baselines, auto_lm (the recommendation) and the oracle.
data/select_fifth/domains.json: data/select/pool.parquet scripts/subsample_select_bench.py
	$(PY) scripts/subsample_select_bench.py --data data/select --out data/select_fifth

bench-lm-quick: setup data-select data/select_fifth/domains.json $(VENV)/.bench
	$(PY) -m benchmarks.bench_lm --data data/select_fifth --store-work work/bench_fifth --work work/bench_lm_fifth \
	  --sizes 16 --ratios 8 --k 32 --steps 100 --checkpoints 25,50,100 --full-seeds 0 --test-texts 200 \
	  --methods none,random,knn,dsir,classifier,auto_lm,oracle --product auto_lm --section lm-quick \
	  --out BENCHMARKS.md $(if $(MODEL),--model $(MODEL))

# What a step of auto's judge=lm fold judge costs with judge_layers=k against every layer, on Llama shapes
# up to 24 layers (random weights, the pool's texts; after bench-lm, whose backbone's tokenizer it uses).
bench-judge-cut: setup data-select
	$(PY) -m benchmarks.bench_judge_cut --out BENCHMARKS.md

# The image track: held-out categories of the real image pool as targets, the benchmark's own small CLIP
# (pre-trained without the held-out images; CLIP_MODEL=CONFIG.json CLIP_PRETRAINED=FILE use a real one),
# image -> caption retrieval and zero-shot classification after the contrastive adapter, and the embed
# stage's images/s against open_clip's own loop.
bench-image: setup data-images
	$(PY) -m benchmarks.bench_image --out BENCHMARKS.md $(if $(CLIP_MODEL),--clip-model $(CLIP_MODEL) --clip-pretrained $(CLIP_PRETRAINED))

clean:
	rm -rf work
