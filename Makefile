# The two commands of the README, self-installing on a fresh machine with Python 3.11+:
#   make demo   the main job on the embedded default (Redis + emulator portal + workers + sample jobs)
#   make test   lint, types and the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

PROMTOOL := .tools/promtool
CHROMIUM := /usr/bin/chromium

.PHONY: demo test lint bench mutants clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $(STAMP)

# promtool checks deploy/prometheus's alert rules (tests/test_monitoring.py): taken from Debian's prometheus
# package without installing it (no daemon, no root needed)
$(PROMTOOL):
	rm -rf .tools/deb && mkdir -p .tools/deb
	cd .tools/deb && apt-get download prometheus
	dpkg-deb -x .tools/deb/prometheus_*.deb .tools/deb/root
	cp .tools/deb/root/usr/bin/promtool $(PROMTOOL)
	rm -rf .tools/deb

# Chromium for the console's browser tests (tests/browser, driven by playwright): Debian's package, installed
# once (the target is the binary, so this is a no-op when it is there); root, or sudo, for apt-get
$(CHROMIUM):
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y chromium

chromium: $(CHROMIUM)

demo: $(STAMP)
	$(BIN)/b24q demo

# the suite in two processes (pytest-xdist); the fault tests, each a whole stack it kills parts of, all in one
# of them, one after another (tests/conftest.py). `.venv/bin/pytest` alone runs everything in one process
test: $(STAMP) $(PROMTOOL) $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n 2

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.run

# each guarantee's test must fail with its mechanism taken out (tests/mutants.py; about 10 minutes, not in CI)
mutants: $(STAMP)
	$(BIN)/python -m tests.mutants

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache *.egg-info
