# `make run` installs and starts the server; `make test` installs the test dependencies and runs the suite.
# Both create their own virtual environment in .venv, pinned by constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.run-installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

run: $(VENV)/.run-installed
	$(BIN)/emailmcp serve

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/python -m ruff check src tests bench examples

# Re-pin every dependency to the newest allowed versions (run after changing pyproject.toml).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	.lock-venv/bin/python -m pip freeze --exclude-editable --all | grep -v '^emailmcp' | grep -vE '^(pip|setuptools)==' > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV)
