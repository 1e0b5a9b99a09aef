# Two entry points for a newcomer: `make demo` and `make test`.
# Both create .venv if absent and install the package into it. When no torch is
# importable there, torch==2.13.0 (CPU) is installed first, so that the `torch>=2.4`
# requirement does not pull a multi-GB CUDA build on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.functrain-installed

.PHONY: setup demo test test-kernels test-kernels-avx2 test-kernels-default bench lint format clean docs

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

# The exactness-heavy modules again with the CPU kernels of other x86-64 machines, so that an
# assertion that only holds with this machine's kernels fails here too (README, Exactness):
# torch's own kernels (ATEN_CPU_CAPABILITY), MKL's (matmul) and oneDNN's (convolutions)
# restricted alike, to AVX2 and to the pre-AVX baseline. One thread, as the tensors are small.
# `make -k test-kernels` runs both even when the first fails (what .ci/run does).
KERNEL_TESTS := tests/test_parity_torch.py tests/test_config_mmengine.py \
	tests/test_loop_mmengine.py tests/test_loop_amp.py tests/test_loop_resume.py \
	tests/test_optimizers_torch.py $(sort $(wildcard tests/test_optim_*.py)) \
	tests/test_schedules_mmengine.py tests/test_torch_optimizer.py tests/test_loop_step.py \
	tests/test_loss_scaling.py tests/test_accumulation.py tests/test_as_torch_optimizer.py \
	tests/test_members.py tests/test_ensemble_parity.py tests/test_vmap.py \
	tests/test_schedules_members.py tests/test_ensembles.py tests/test_runner_members.py \
	tests/test_sweep.py tests/test_compiled.py
KERNEL_PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider $(KERNEL_TESTS)

test-kernels: test-kernels-avx2 test-kernels-default

test-kernels-avx2: $(STAMP)
	ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 $(KERNEL_PYTEST)

test-kernels-default: $(STAMP)
	ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41 $(KERNEL_PYTEST)

# The documentation site (mkdocs.yml) into site/: the `docs` extra (pinned; not in `dev`, so
# `make test` does not pay for it), then a strict build, where any warning (a broken link or
# cross-reference, a docstring griffe cannot read) fails. docs/hooks.py copies README.md's
# sections into the pages and draws the schedule plots with functrain during the build.
DOCS_STAMP := $(VENV)/.functrain-docs-installed

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	OMP_NUM_THREADS=1 NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

bench: $(STAMP)
	$(PY) benchmarks/step.py

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis site
