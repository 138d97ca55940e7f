# make test / make demo: create or reuse .venv, install what is missing, run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.samcpu-installed
export NUMBA_NUM_THREADS ?= 2

.PHONY: test lint demo tour bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch==2.13.0 first: it is the CPU wheel on this machine; a bare `torch`
# requirement in a fresh environment would pull a CUDA build of several GB.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[torch,test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# ruff: the rules are in pyproject.toml
lint: $(STAMP)
	$(PY) -m ruff check .

# about 3 minutes: SAM with a 1M-slot memory learns copy with the curriculum
demo: $(STAMP)
	$(PY) -m samcpu train --task copy --model sam --slots 1000000 --minutes 3 --steps 1000000 --out runs/demo

# the NumPy-level tour: a 10M-slot SparseMemory stepped, rewound, replayed and reset
tour: $(STAMP)
	$(PY) -m samcpu.demo

bench: $(STAMP)
	$(PY) benchmarks/kernels.py

# docs/results.md and the README's headline table from benchmarks/results/*.json
.PHONY: results
results: $(STAMP)
	$(PY) benchmarks/make_results.py

clean:
	rm -rf $(VENV) build *.egg-info
