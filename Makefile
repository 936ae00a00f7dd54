# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow test-flower bench clean

setup: $(STAMP)

# torch==2.13.0 first: it is the CPU wheel on local disk; any other torch pin pulls a CUDA build.
# The flower extra (flwr 1.42, no torch, no ray) makes the in-process Flower tests run in `make
# test`; the real-engine tests stay behind `-m flower` (`make test-flower`).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,flower]'
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m fl_core run --out runs/demo --overwrite  # a rerun replaces it; the old privacy ledger is kept beside

# One pytest worker per core (pytest-xdist): on CI's 2 cores the suite takes about half the time.
test: $(STAMP)
	$(PY) -m pytest -q -n auto

test-slow: $(STAMP)
	$(PY) -m pytest -q -n auto -m slow

# Flower's real Deployment Engine on 127.0.0.1 (minutes); the Simulation Engine test also needs
# `pip install -e '.[simulation]'` (ray) and skips without it.
test-flower: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -q -m flower

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
