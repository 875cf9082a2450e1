# Quality Workbench — two commands set everything up on a fresh machine:
#   make run    install, build the demo data when missing, start the app on 127.0.0.1:8501
#   make test   install, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSSTAMP := .stamp-system
DEMO_DB := data_samples/demo.db
PORT ?= 8501
# Two workers: much of the suite waits on servers (PostgreSQL, Orthanc, moto, Streamlit, Chromium).
PYTEST_ARGS ?= -n 2
# torch: the CPU wheel pin on machines without CUDA (any other spec pulls GBs of CUDA wheels).
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)

PEERS_STAMP := bench/.peers-venv/.recipe

.PHONY: install system-deps peers demo run test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	# crowd-kit is the Dawid-Skene peer of tests and benchmarks; its declared deps pull
	# transformers, so it goes in without them (its real import needs are in [test]).
	$(BIN)/python -m pip install -q --no-deps "crowd-kit==1.4.2"
	@touch $(STAMP)

# Debian packages the tests talk to (PostgreSQL, Orthanc + DICOMweb, Chromium). Installed only
# when missing.
system-deps:
	@bash scripts/system-deps.sh

# Peers that need older stacks (Evidently 0.7 needs pandas < 3) live in their own venv, so the
# project's pins never move. Tests compare our drift statistics with Evidently's through it.
peers: $(PEERS_STAMP)

$(PEERS_STAMP): bench/peers_venv.sh
	@bash bench/peers_venv.sh $(PYTHON)

demo: install
	@if [ ! -f $(DEMO_DB) ] || [ ! -f data_samples/demo_truth.json ]; then \
		echo "building demo data into data_samples/ ..."; \
		$(BIN)/quality demo --out data_samples --seed 0 --size small && \
		echo "scoring image quality of the demo ..." && \
		$(BIN)/quality score --dataset chest-xray-demo --db sqlite:///$(DEMO_DB); \
	else \
		$(BIN)/quality db upgrade --db sqlite:///$(DEMO_DB) --json >/dev/null; \
	fi

# The demo runs in demo mode (no sign-in, a role picker, said plainly in the sidebar); set
# QUALITY_DEMO_MODE=0 and add users with `quality users add` to run it with sign-in.
run: demo
	QUALITY_DEMO_MODE=$${QUALITY_DEMO_MODE:-1} $(BIN)/quality app --port $(PORT)

test: install system-deps peers
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install demo peers
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/agreement.py
	$(BIN)/python bench/imaging.py --with-cnn
	$(BIN)/python bench/drift.py
	$(BIN)/python bench/card.py
	$(BIN)/python bench/viewer.py
	$(BIN)/python bench/spot_check.py
	$(BIN)/python bench/rank.py
	$(BIN)/python bench/stores.py
	# At scale: the large demo on a throwaway PostgreSQL cluster (bench/large_db.py, built once).
	$(BIN)/python bench/pages.py
	$(BIN)/python bench/load.py --sessions 20 --minutes 5

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache data_samples/dicom data_samples/embeddings $(DEMO_DB)* data_samples/demo_truth.json
