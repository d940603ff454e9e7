#!/usr/bin/env bash
# The pretraining demo: pretrain a small LGI-Former on synthetic unlabelled face videos (CPU), then fine-tune the
# demo classifier from its encoder. Flags are passed to the pretraining step, e.g. --epochs 40.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
OUTPUT_DIR=${OUTPUT_DIR:-saved/model/pretraining/demo}
python run_mae_pretraining.py --demo --output_dir "$OUTPUT_DIR" "$@"
python run_class_finetuning.py --demo --finetune "$OUTPUT_DIR/checkpoint-last.pth" --output_dir "${FINETUNE_OUTPUT_DIR:-saved/model/finetuning/demo_pretrained}"
