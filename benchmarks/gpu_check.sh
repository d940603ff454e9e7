#!/usr/bin/env bash
# The GPU check in one go: install the wheels carried in wheels/ (decord and tensorboardX,
# which the GPU machine's python3 lacks; see benchmarks/gpu_check.py's docstring), then run benchmarks/gpu_check.py
# under a hard time limit and print its report.
#   bash benchmarks/gpu_check.sh [OUT_DIR] [gpu_check.py flags...]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-saved/gpu_check}
shift || true
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels}
if [ -d "$WHEELS" ]; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --find-links "$WHEELS" --target /tmp/gpu_check_site \
            decord tensorboardX; then
        export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "gpu_check.sh: could not install the wheels in $WHEELS: the parts that need them will record it" >&2
    fi
fi
export PYTHONUNBUFFERED=1
timeout -k 10 "${GPU_CHECK_TIMEOUT:-540}" "$PY" benchmarks/gpu_check.py --out "$OUT" "$@"
status=$?
[ -f "$OUT/gpu_check.md" ] && cat "$OUT/gpu_check.md"
exit $status
