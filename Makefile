# Two entry points (README): `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k loader"`.
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench clean

setup: $(VENV)/.installed

# torch==2.13.0 first: where pip finds a CPU wheel of it (a local wheel cache, the CPU index) that is what
# installs; a bare range with no torch installed would pull the newest, multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[models,dev]"
	touch $@

demo: setup
	$(VENV)/bin/spatialforge demo --out demo-out

test: setup
	$(PY) -m pytest -n 2 -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -n 2 -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) demo-out .pytest_cache
