# The README's two commands: `make demo` and `make test`. Each sets everything up first (idempotent).
.PHONY: setup demo test lint format bench
VENV := .venv
BIN := $(VENV)/bin

setup:
	@bash scripts/setup.sh

demo:
	@EXTRAS=none bash scripts/setup.sh
	$(BIN)/trajlab demo --out runs/demo

test: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	MPLBACKEND=agg $(BIN)/python -m pytest

lint:
	$(BIN)/ruff check src tests benchmarks examples && $(BIN)/ruff format --check src tests benchmarks examples

format:
	$(BIN)/ruff format src tests benchmarks examples && $(BIN)/ruff check --fix src tests benchmarks examples
