# formal-sae: `make demo` runs the main job on a built-in default, `make test` runs the checks.
# Both create the virtual environment .venv on first use. On a machine without an NVIDIA GPU the
# CPU build of torch is installed first (set TORCH_INDEX=https://download.pytorch.org/whl/cpu
# where the default package index would otherwise give the CUDA build).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.formal-sae-installed
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
DEMO_OUT ?= runs/quick
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test lint docs docs-serve bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing torch with CUDA"; \
		$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"; \
	else \
		echo "no GPU: installing the CPU build of torch"; \
		$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/formal-sae reproduce --scale quick --out $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The Ray tests start a real local Ray cluster and stop every Ray process on teardown (ray stop
# --force), so they run on their own, in one process, after the xdist-parallel suite (~1 minute).
test: lint
	$(BIN)/python -m pytest -q -n 2
	$(BIN)/python -m pytest -q -m slow tests/test_ray.py
	$(BIN)/mkdocs build --strict --quiet --site-dir site

# The docs build fetches KaTeX (formulas, typeset at build time) from the npm registry into build/ on
# first use (docs/hooks/katex_math.py): it needs Node.js and npm.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve

bench: $(STAMP)  # every benchmark in turn (one to two hours on 2 CPU cores); tables on stdout
	for b in grammars models saes interventions causal; do $(BIN)/python benchmarks/bench_$$b.py || exit 1; done

clean:
	rm -rf site runs build .pytest_cache .ruff_cache
