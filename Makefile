# One command each: `make demo`, `make test`, `make dev`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export AGENTOPS_HOME ?= $(CURDIR)/.agentops
export GX_ANALYTICS_ENABLED := False
export FEAST_USAGE := False

.PHONY: install demo dev test lint bench status clean

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

install: $(BIN)/.installed

demo: install  ## set up and run the whole lifecycle on embedded defaults
	$(BIN)/agentops demo

dev: install  ## Dagster UI + daemon (sensors, schedules) and the MLflow UI
	$(BIN)/agentops dev

status: install
	$(BIN)/agentops status

test: install  ## set up and pass the tests
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/lifecycle.py
	$(BIN)/python bench/definitions_load.py

clean:  ## reset the project's state (stops nothing that is still serving)
	rm -rf $(AGENTOPS_HOME)
