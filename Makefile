# Two entry points for a newcomer: `make demo` and `make test`.
# Both create .venv if absent and install the package into it. When no torch is
# importable there, torch==2.13.0 (CPU) is installed first, so that the `torch>=2.4`
# requirement does not pull a multi-GB CUDA build on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.functrain-installed

.PHONY: setup demo test bench lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The seed's first config (AdamW + paramwise_cfg + clip) through `functrain train`: trains,
# validates, checkpoints, plots the logged curves and the configured schedule. One thread:
# the model is tiny and extra OpenMP threads only wait.
demo: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m functrain.cli train examples/configs/digits_demo.py --work-dir work_dirs/digits_demo
	$(PY) -m functrain.cli schedule examples/configs/digits_demo.py --plot work_dirs/digits_demo/schedule.png

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/step.py

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
