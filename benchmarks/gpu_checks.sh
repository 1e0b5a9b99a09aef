#!/bin/bash
# GPU checks for issues 13, 14, 16 (one prepared run on the lent H200).
cd "$(dirname "$0")/.." || exit 1
# Expects optree (and any other package the GPU machine lacks) as wheels in .whl/ and writes
# logs to $OUT: one run on a lent GPU machine (bash benchmarks/gpu_checks.sh [tests|bench|all]).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 CI=1
nvidia-smi -L
python3 -c "import torch, functrain; print('torch', torch.__version__, torch.cuda.get_device_name())"
part=${1:-all}
if [ "$part" = tests ] || [ "$part" = all ]; then
  echo "== GPU tests"
  timeout 300 python3 -m pytest -q -p no:cacheprovider -rs -k "cuda or gpu or CUDA" \
    tests/test_members.py tests/test_fused_gpu.py tests/test_loop_gpu.py tests/test_compiled.py \
    tests/test_schedules_members.py tests/test_schedules.py tests/test_torch_optimizer.py \
    tests/test_distributed_loop.py tests/test_runner_members.py tests/test_ensembles.py 2>&1 | tee $OUT/gpu_tests.log | tail -40
fi
if [ "$part" = bench ] || [ "$part" = all ]; then
  echo "== ensemble benchmark"
  timeout 200 python3 benchmarks/ensemble.py --device cuda --members 4 16 64 --repeats 7 --steps 5 2>&1 | tee $OUT/ensemble.log | tail -8
  echo "== loop benchmark (MLP 256-128-128-10)"
  timeout 200 python3 benchmarks/loop.py --device cuda --width 128 --rounds 3 2>&1 | tee $OUT/loop.log | tail -14
  echo "== step benchmark"
  timeout 200 python3 benchmarks/step.py --device cuda --repeats 10 2>&1 | tee $OUT/step.log | tail -24
fi
