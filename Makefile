# The two entry points of the README: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOME_DIR ?= pacscore-home
PLUGINS := $(wildcard plugins/*/setup.cfg)

.PHONY: install system-packages serve test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Debian packages some Python dependencies build against (python-ldap)
system-packages:
	scripts/install-system-packages scripts/apt-build-packages.txt

# core and every bundled plugin, editable, in the virtual environment
install: system-packages $(BIN)/python
	$(BIN)/pip install -q -e ".[test]" $(foreach p,$(PLUGINS),-e $(dir $(p)))

serve: install
	$(BIN)/pacscore --home $(HOME_DIR) init
	$(BIN)/pacscore --home $(HOME_DIR) serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install
	scripts/install-system-packages scripts/apt-test-packages.txt
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=600 --durations=25
