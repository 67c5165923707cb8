# Two commands for a newcomer on a fresh Linux machine with Python 3.11:
#   make demo   create .venv, install, run a federated simulation on Ray (tracked in MLflow)
#   make test   create .venv, install, run the whole test suite
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export UAAP_HOME ?= $(CURDIR)/.uaap

.PHONY: demo test install lint clean

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first and pinned: a plain 'torch' requirement would pull a multi-GB CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[all,dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/uaap demo

# The dashboard test drives a real headless Chromium (Debian's chromium + chromium-driver).
BROWSER := /usr/bin/chromium /usr/bin/chromedriver
$(BROWSER):
	@echo "installing Debian's chromium and chromium-driver for the browser test"
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq chromium chromium-driver >/dev/null

# mypy takes its files and strictness from [tool.mypy] in pyproject.toml.
test: $(STAMP) $(BROWSER)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache
