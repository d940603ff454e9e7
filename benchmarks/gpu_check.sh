#!/usr/bin/env bash
# The GPU check in one go (at most 5 minutes on one GPU): install the wheels carried in .whl/, run the tests marked
# `gpu` (tests/test_gpu.py, ≤ 120 s), then benchmarks/gpu_check.py's measurements (≤ 175 s of parts) under a hard time
# limit, and print its report.
# Only the report (gpu_check.md, gpu_check.json, gpu_tests.txt: a few KB) goes to OUT_DIR (default: $OUT, else
# /tmp/gpu_check); data, checkpoints and logs stay in a work folder under /tmp.
#   bash benchmarks/gpu_check.sh [OUT_DIR] [gpu_check.py flags...]     e.g. bash benchmarks/gpu_check.sh "$OUT"
#   bash benchmarks/gpu_check.sh DIR --cpu                              every part on the CPU, tiny (CI runs it)
# The wheels the GPU machine's Python 3.12 lacks (decord, tensorboardX), fetched once into .whl/ (ignored by git: name
# it among the paths that travel with the tree):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       --platform manylinux1_x86_64 -d .whl decord tensorboardX
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-/tmp/gpu_check}}
shift || true
PY=${PYTHON:-python3}
SITE=$(mktemp -d /tmp/gpu_check_site.XXXXXX)
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --find-links .whl --target "$SITE" \
            decord tensorboardX; then
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "gpu_check.sh: could not install the wheels in .whl/: the parts that need them will record it" >&2
    fi
fi
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
LIMIT=${GPU_CHECK_TIMEOUT:-195}
if [[ " $* " == *" --cpu "* ]]; then
    LIMIT=${GPU_CHECK_TIMEOUT:-1100}  # a small shared CPU: the parts' CPU budgets
else  # the GPU correctness tests (skipped without CUDA)
    timeout -k 5 "${GPU_TESTS_TIMEOUT:-120}" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py \
        > "$OUT_DIR/gpu_tests.txt" 2>&1
    tail -n 3 "$OUT_DIR/gpu_tests.txt"
fi
timeout -k 10 "$LIMIT" "$PY" benchmarks/gpu_check.py --out "$OUT_DIR" "$@"
status=$?
[ -f "$OUT_DIR/gpu_check.md" ] && cat "$OUT_DIR/gpu_check.md"
exit $status
