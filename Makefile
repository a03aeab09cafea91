# The two commands of the README: `make demo` (the whole method on the embedded default) and
# `make test` (the test suite). Each sets up its own virtual environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TF := $(VENV)/bin/toolformer

.PHONY: install test test-all demo bench experiment experiment-search clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

# The suite, including the group that uses the real default model (fetched once, seconds).
test: install
	$(TF) fetch-model
	$(PY) -m pytest -q

# Also the long cases (kill/resume campaigns, load): see RELIABILITY.md.
test-all: install
	$(TF) fetch-model
	$(PY) -m pytest -q -m "slow or not slow"

demo: install
	$(TF) fetch-model
	$(TF) demo

# Benchmarks (not tests): augmentation vs the naive way, generation vs model.generate, BM25 index.
bench: install
	$(TF) fetch-model
	$(PY) benchmarks/bench_augment.py --docs 6 --threads 1 --windows 16
	$(PY) benchmarks/bench_generate.py --threads 1

# The method on real data (needs ../shared/data): augment GSM8K train, fine-tune, evaluate base vs
# fine-tuned on MAWPS, GSM8K test and WikiText-2. Hours on a 2-core CPU; DOCS=500 for a shorter run.
DOCS ?= 2000
experiment: install
	$(TF) fetch-model
	$(PY) benchmarks/experiment.py --docs $(DOCS) --output experiment_out

# The search track (needs ../shared/data): WikiSearch calls on Wikipedia articles, LAMA, dates. ~50 min.
experiment-search: install
	$(TF) fetch-model
	$(PY) benchmarks/experiment_search.py --docs 600 --workers 2 --threads 2 --lama 50 50 200

clean:
	rm -rf $(VENV) demo_out
