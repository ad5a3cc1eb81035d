#!/usr/bin/env bash
# The GPU checks in one call, well inside 10 minutes on one H200: the CUDA-marked tests (about 3 minutes,
# with the tiny synthetic dataset they generate), then scripts/bench_gpu.py (at most 6 minutes), whose
# table goes to docs/benchmarks.md ("Training on a GPU"). Outputs land in ${OUT:-gpu_check}/.
#
#   scripts/gpu_check.sh                 # PYTHON=.venv/bin/python by default
#   PYTHON=/path/to/python scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv | tee "$OUT/nvidia-smi.csv"

timeout 210 "$PYTHON" -m pytest -m cuda -q -p no:cacheprovider tests 2>&1 | tee "$OUT/tests.log"
tests=${PIPESTATUS[0]}
timeout 370 "$PYTHON" scripts/bench_gpu.py 2>"$OUT/bench_gpu.stderr" | tee "$OUT/bench_gpu.md"
bench=${PIPESTATUS[0]}
echo "cuda tests: exit $tests; bench_gpu.py: exit $bench (124 = ran out of time)"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
