#!/usr/bin/env bash
# The one prepared run for a session lent a GPU (typically 6-7 minutes; its timeouts end it by
# 9m40s): the Triton engine's tests compiled for the GPU (no interpreter) with the torch engine's CUDA test, then
# benchmarks/gpu_speed.py with budgets that fit. Installs nothing: it uses the repository's .venv.
# Everything printed is also written under $OUT (default /tmp/gpu_device_check).
#
#     bash benchmarks/gpu_device_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_device_check}
mkdir -p "$OUT"
unset TRITON_INTERPRET

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt"

timeout 200 .venv/bin/pytest -q -p no:cacheprovider tests/test_triton.py "tests/test_sparse.py::test_engine_on_cuda" \
    --durations=10 2>&1 | tee "$OUT/tests.txt"
tests=${PIPESTATUS[0]}

timeout 380 .venv/bin/python benchmarks/gpu_speed.py --compile-budget 45 --cli-budget 60s 2>&1 \
    | tee "$OUT/gpu_speed.txt"
bench=${PIPESTATUS[0]}

echo "tests exit status $tests, benchmark exit status $bench" | tee "$OUT/status.txt"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
