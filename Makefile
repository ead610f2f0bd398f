# Two entry points for a fresh clone: `make demo` and `make test`. Each makes its own venv.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tongban demo

# One pytest worker per core (pytest-xdist): the suite mostly waits on its own servers.
TEST_WORKERS ?= auto
test: $(STAMP)
	$(BIN)/pytest -q -n $(TEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy gateway adapters tests bench
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .tongban-demo .tongban-data .mypy_cache .pytest_cache .ruff_cache
