# The two commands of the README, self-installing on a fresh machine with Python 3.11+:
#   make demo   the main job on the embedded default (Redis + emulator portal + workers + sample jobs)
#   make test   lint, types and the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

PROMTOOL := .tools/promtool

.PHONY: demo test lint bench mutants clean

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

demo: $(STAMP)
	$(BIN)/b24q demo

test: $(STAMP) $(PROMTOOL)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

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
