# Two entry points that do all the set-up on a fresh machine (Python 3.11 + pip):
#   make demo   — virtual environment, install, a short federated simulation with DP (runs/demo)
#   make test   — virtual environment, install with the dev extra, run the test suite
# `make test-fast` skips the slow end-to-end tests (real Flower runtimes and processes).

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN := torch==2.13.0

.PHONY: venv install demo test test-fast clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	rm -rf runs/demo
	$(VENV)/bin/fedcredit simulate --institutions 5 --rounds 10 --epsilon 3 --seed 7 --out runs/demo
	@echo "open runs/demo/report.html; the model package is in runs/demo/model"

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf runs .pytest_cache
