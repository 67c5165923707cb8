# Two commands for a newcomer on a fresh Linux machine with Python 3.11:
#   make demo   create .venv, install, run a federated simulation on Ray (tracked in MLflow)
#   make test   create .venv, install, run the whole test suite
# and one for whoever upgrades dependencies:
#   make lock [UPGRADE="mlflow ray"]   re-resolve requirements.lock (only UPGRADE's packages move)
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# Every package of '.[all,dev]' at the version the tests passed with (Python 3.11, Linux x86_64).
LOCK   := requirements.lock
# torch first and pinned: a plain 'torch' requirement would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0
# Where the CPU build of torch comes from when the lock is made (the lock names no CUDA package).
TORCH_WHEELS ?= $(if $(wildcard /opt/wheels),/opt/wheels,https://download.pytorch.org/whl/cpu/torch/)
export UAAP_HOME ?= $(CURDIR)/.uaap

.PHONY: demo test install lint lock clean mutate

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first (see TORCH), then the project with every dependency held at the lock's version.
$(STAMP): $(PY) pyproject.toml $(LOCK)
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet --constraint $(LOCK) -e '.[all,dev]'
	@touch $(STAMP)

install: $(STAMP)

# DEMO_FLAGS: flags for `uaap demo`, e.g. DEMO_FLAGS="--rounds 2 --central-epochs 2" (the doc tests use it).
demo: $(STAMP)
	$(VENV)/bin/uaap demo $(DEMO_FLAGS)

# The dashboard test drives a real headless Chromium (Debian's chromium + chromium-driver).
BROWSER := /usr/bin/chromium /usr/bin/chromedriver
$(BROWSER):
	@echo "installing Debian's chromium and chromium-driver for the browser test"
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq chromium chromium-driver >/dev/null

# mypy takes its files and strictness from [tool.mypy] in pyproject.toml. PYTEST_ARGS narrows the pytest part,
# e.g. PYTEST_ARGS="tests/uaap -m 'not slow'" (default: the whole suite). The tests mostly wait on processes
# (Ray, Flower, browsers), so pytest runs them on PYTEST_WORKERS xdist workers, a module (or a doc) per worker at a
# time (tests/conftest.py); PYTEST_WORKERS=0 runs them in this one process.
PYTEST_WORKERS ?= 3
test: $(STAMP) $(BROWSER)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# Mutation score of the privacy, aggregation and crypto core (tests/mutate.py; mutmut, config in pyproject.toml):
# per module killed/survived/equivalent and the surviving mutants, in artifacts/mutation/report.md. Not in CI:
# about an hour on 2 cores. MODULES="strategies/secure.py" runs one; MUTATE_ARGS=--survivors re-runs the survivors.
mutate: $(STAMP)
	$(PY) tests/mutate.py $(MUTATE_ARGS) $(MODULES)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

# Resolve '.[all,dev]' for Python 3.11 on Linux x86_64 with uv (Flower's own dependency). Versions already in
# the lock are kept unless UPGRADE names them; torch is asked for as the +cpu build (the lock's own torch==X pin
# would otherwise let uv keep PyPI's CUDA build of the same version), written without its +cpu label so that
# the same line holds on any index.
lock: $(PY)
	@test -x $(VENV)/bin/uv || $(PIP) install --quiet uv
	echo "$(TORCH)+cpu" | $(VENV)/bin/uv pip compile --no-config pyproject.toml - --extra all --extra dev \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --find-links $(TORCH_WHEELS) \
		--custom-compile-command 'make lock' $(foreach p,$(UPGRADE),--upgrade-package $(p)) --quiet -o $(LOCK)
	sed -i 's/^torch==\([^+]*\)+cpu$$/torch==\1/' $(LOCK)
	@! grep -n '^nvidia-cu\|^triton==\|^torch==.*+' $(LOCK) || { echo "$(LOCK) pulls a CUDA torch"; exit 1; }

clean:
	rm -rf $(VENV) .pytest_cache
