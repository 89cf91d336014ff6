# quantmesh developer commands. `make up` and `make test` work on a fresh clone:
# each creates .venv and installs the project (with its dev tools) on first use.

VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup up test check lint typecheck pytest bench gen baseline clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,train]'
	rm -f $(VENV)/.installed-* && touch $@

## Run the platform on embedded defaults: replay the shipped year, print a summary.
up: setup
	$(BIN)/quantmesh up --until-end

## Everything CI checks: contracts, lint, types, then the test suite.
test: check pytest

check: setup
	$(BIN)/buf lint
	$(BIN)/buf breaking --against proto/baseline.binpb
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) typecheck

# mypy cannot follow setuptools' lenient editable finder, so it checks a strict
# editable install (a symlink tree under build/), then the lenient one is restored.
typecheck: setup
	$(BIN)/python -m pip install --quiet --no-deps -e . --config-settings editable_mode=strict
	$(BIN)/mypy -p quantmesh.services -p quantmesh.runtime -p quantmesh.cli -p quantmesh.bench -p quantmesh.datasets -p quantmesh.mesh -p quantmesh.observability -p quantmesh.storage; \
	  status=$$?; $(BIN)/python -m pip install --quiet --no-deps -e .; exit $$status

pytest: setup
	$(BIN)/pytest

bench: setup
	$(BIN)/quantmesh bench

## Regenerate gen/ from proto/ (commit the result).
gen: setup
	$(BIN)/python scripts/gen_protos.py

## Deliberately accept the current contracts as the released baseline for `buf breaking`.
baseline: setup
	$(BIN)/buf build -o proto/baseline.binpb

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache
