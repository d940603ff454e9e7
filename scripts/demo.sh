#!/usr/bin/env bash
# The built-in demo: builds the environment on first use, generates the synthetic dataset, fine-tunes a small
# LGI-Former with the CA branch on the CPU and tests it. Extra flags are passed through, e.g. --fusion none.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
python run_class_finetuning.py --demo "$@"
