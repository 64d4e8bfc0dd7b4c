# The commands of the README: `make serve`, `make test` and `make bench`.
# Both create .venv on first run and install what they need into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/profilebase serve

# Two pytest processes (pytest-xdist), each test file whole in one of them.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

# Every performance figure in one table; `make bench ARGS=--quick` for a short run,
# `make bench ARGS=--database=postgresql://root@127.0.0.1:5432/test` on PostgreSQL.
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py $(ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info
