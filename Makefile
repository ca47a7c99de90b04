# garden_assets — the commands a newcomer needs. Everything lands in GARDEN_HOME (default .garden/).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export GARDEN_HOME  ?= $(CURDIR)/.garden
export DAGSTER_HOME ?= $(GARDEN_HOME)/dagster
export GARDEN_DROPS ?= $(CURDIR)/data/drops
export HF_HUB_OFFLINE ?= 1

.PHONY: setup run ui test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# a newer pip is nice to have, not needed: the venv's own pip installs the project too
	$(BIN)/pip install -q -U pip || echo "make setup: pip upgrade failed; keeping the venv's pip"
	$(BIN)/pip install -q -e '.[dev,deploy]'
	@# the llama.cpp backend: a source build (llava/mtmd off: not used, a third of the build); on failure the
	@# project still works with transformers generation (garden ask and evaluation_answers say so)
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(BIN)/pip install -q -e '.[llamacpp]' \
	  && $(BIN)/python -m garden_assets.llm.gguf_export fetch-converter \
	  || echo "make setup: llama-cpp-python did not install; generation falls back to transformers"
	touch $@

run: setup  ## register the bundled drops and materialize every asset into GARDEN_HOME
	@mkdir -p $(DAGSTER_HOME)
	$(BIN)/python -m garden_assets.run_local

ui: setup  ## the Dagster UI (and daemon) on http://127.0.0.1:3000
	@mkdir -p $(DAGSTER_HOME)
	@test -f $(DAGSTER_HOME)/dagster.yaml || cp deploy/dagster.local.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

test: setup  ## the whole suite (real-data tests need GARDEN_SHARED_DATA; .ci/run sets it)
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/ingest.py

clean:
	rm -rf $(GARDEN_HOME)
