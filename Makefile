# blockfabric: the two commands a new user types first.
#   make run   - create .venv, install, start the target on its default config
#   make test  - create .venv, install with test extras + system packages, run pytest
#   make fuzz  - coverage-guided fuzzing of every parser (atheris), see docs/fuzzing.md
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test venv deps lint bench clean fuzz

$(BIN)/python:
	@$(PY) -m venv $(VENV) || { sh scripts/install-deps.sh python && $(PY) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q -e '.[test,dev,bench]'
	@sh scripts/install-deps.sh pyverbs-link $(VENV)

run: $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/blockfabric start $(ARGS)

deps:
	sh scripts/install-deps.sh all

test: venv deps
	$(BIN)/python -m pytest $(ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

# make fuzz [FUZZ=harness] [FUZZ_RUNS=N | FUZZ_SECONDS=S]: each harness in turn
FUZZ ?= all
FUZZ_RUNS ?= 1000000
FUZZ_SECONDS ?=
fuzz: venv
	$(BIN)/pip install -q -e '.[fuzz]'
	$(BIN)/python tests/fuzz/run_fuzz.py $(FUZZ) $(if $(FUZZ_SECONDS),--seconds $(FUZZ_SECONDS),--runs $(FUZZ_RUNS))

bench: venv deps
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
