# make train  — train the tiny model on the built-in corpus (installs first when needed)
# make test   — check formatting and lint (ruff), then run the test suite
# make test-long — the tests that train for many minutes to check a whole capability (not in make test)
# make install — create .venv and install the project with its dev, ingest, sweep, hf, serve, ray, eval and lora extras
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install train test test-long lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: on a machine without CUDA this takes the small CPU build when one is available
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0" || $(PY) -m pip install -q torch
	$(PY) -m pip install -q -e ".[dev,ingest,sweep,hf,serve,ray,eval,lora]"
	# unstructured's PDF/image code imports unstructured-inference; its declared deps would replace our torch
	$(PY) -m pip install -q --no-deps "unstructured-inference>=1.6.12,<2"
	touch $(STAMP)

train: install
	$(PY) train.py $(ARGS)

test: install lint
	$(PY) -m pytest -q $(ARGS)

test-long: install
	$(PY) -m pytest -q -m long $(ARGS)

lint: install
	$(PY) -m ruff format --check --quiet .
	$(PY) -m ruff check --quiet .

# make plots RUN=outputs/train/<timestamp> — the figures in docs/images from one run (ARGS: --name, --out)
.PHONY: plots
plots: install
	@test -n "$(RUN)" || { echo "usage: make plots RUN=outputs/<task>/<timestamp> [ARGS='--name NAME']"; exit 2; }
	$(PY) -m tools.plots $(RUN) $(ARGS)

clean:
	rm -rf outputs multirun .cache/llm
