# pylvs: `make test` runs every test, `make demo` shows the balancer at work.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check lvs schedulers forwarding tests benchmarks examples

test: venv lint
	$(PY) -m pytest -q

demo: venv
	$(PY) examples/demo.py

bench: venv
	$(PY) benchmarks/core.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
