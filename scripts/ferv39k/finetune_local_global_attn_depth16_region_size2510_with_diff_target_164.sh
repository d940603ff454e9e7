#!/usr/bin/env bash
# FERV39k (all scenes): the original recipe, 3 processes x batch 40 = global batch 120.
# MAE-DFER-CA runs this launcher for its results; each of its variants is one variable: FUSION=add (the default),
# LG_REGION_SIZE="4 5 10" (its "add(4*5)"), FUSION=pos (its "add(pos)"), FUSION=cat. FUSION=none: plain MAE-DFER.
# Each variant has its own output folder. One GPU: NPROC_PER_NODE=1 UPDATE_FREQ=3 keeps the global batch.
# Several machines: NNODES, NODE_RANK, MASTER_ADDR (docs/MULTI_GPU.md). Extra flags are passed through ("$@").
# On Slurm: RECIPE=ferv39k sbatch [Slurm options] scripts/slurm/finetune.sbatch (docs/SLURM.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/launch.sh
FUSION=${FUSION:-add}
LG_REGION_SIZE=${LG_REGION_SIZE:-2 5 10}
VARIANT=""
[ "$FUSION" = none ] || VARIANT="_fusion_${FUSION}"
[ "$LG_REGION_SIZE" = "2 5 10" ] || VARIANT="${VARIANT}_region_size${LG_REGION_SIZE// /}"
MODEL_DIR=videomae_pretrain_base_dim512_local_global_attn_depth16_region_size2510_patch16_160_frame_16x4_tube_mask_ratio_0.9_e100_with_diff_target_server170
FINETUNE=${FINETUNE-./saved/model/pretraining/voxceleb2/${MODEL_DIR}/checkpoint-49.pth}  # FINETUNE= : from scratch
OUTPUT_ROOT=${OUTPUT_ROOT:-./saved/model/finetuning}
OUTPUT_DIR=${OUTPUT_DIR:-${OUTPUT_ROOT}/ferv39k/voxceleb2_${MODEL_DIR}/checkpoint-49/eval_lr_1e-3_epoch_100_size160_sr1_classify_token_type_region_server164${VARIANT}}
mkdir -p "$OUTPUT_DIR"
OMP_NUM_THREADS=1 launch 3 12356 run_class_finetuning.py \
    --model vit_base_dim512_no_depth_patch16_160 --depth 16 \
    --data_set FERV39k --nb_classes 7 --data_path ./saved/data/ferv39k/all_scenes ${DATA_ROOT:+--data_root "$DATA_ROOT"} \
    ${FINETUNE:+--finetune "$FINETUNE"} --log_dir "$OUTPUT_DIR" --output_dir "$OUTPUT_DIR" \
    --batch_size 40 --update_freq "${UPDATE_FREQ:-1}" --num_sample 1 --input_size 160 --short_side_size 160 \
    --save_ckpt_freq 1000 --num_frames 16 --sampling_rate 1 --opt adamw --lr 1e-3 --opt_betas 0.9 0.999 \
    --weight_decay 0.05 --epochs 100 --dist_eval --test_num_segment 2 --test_num_crop 2 --num_workers 16 \
    --attn_type local_global --lg_region_size ${LG_REGION_SIZE} --lg_classify_token_type region \
    --fusion "$FUSION" "$@" \
    2>&1 | tee -a "$OUTPUT_DIR/nohup.out"
