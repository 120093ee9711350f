# Two commands set up everything: `make app` and `make test` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup app test bench-accuracy clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

app: setup
	$(PY) app/serve.py

test: setup
	bash tests/e2e/install_chromium.sh
	$(PY) -m pytest

bench-accuracy: setup
	$(PY) -m bench.accuracy

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
