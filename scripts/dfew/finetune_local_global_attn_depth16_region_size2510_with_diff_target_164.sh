#!/usr/bin/env bash
# DFEW, 5-fold: the original recipe, 3 processes x batch 32 = global batch 96. `--folds 1 2 3 4 5` (the
# default; or SPLITS="1") picks the folds; a finished fold is skipped, an unfinished one resumes; then the fold table
# (scripts/folds.sh). One GPU: NPROC_PER_NODE=1 UPDATE_FREQ=3. Several machines: NNODES, NODE_RANK, MASTER_ADDR
# (docs/MULTI_GPU.md). Other flags are passed through.
# On Slurm: RECIPE=dfew sbatch [Slurm options] scripts/slurm/finetune.sbatch (docs/SLURM.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/launch.sh
source scripts/folds.sh
MODEL_DIR=videomae_pretrain_base_dim512_local_global_attn_depth16_region_size2510_patch16_160_frame_16x4_tube_mask_ratio_0.9_e100_with_diff_target_server170
FINETUNE=${FINETUNE-./saved/model/pretraining/voxceleb2/${MODEL_DIR}/checkpoint-49.pth}  # FINETUNE= : from scratch
OUTPUT_ROOT=${OUTPUT_ROOT:-./saved/model/finetuning}

fold_dir() {
    echo "${OUTPUT_ROOT}/dfew/voxceleb2_${MODEL_DIR}/checkpoint-49/eval_split0$1_lr_1e-3_epoch_100_size160_sr4_classify_token_type_region_server164"
}

run_fold() {
    local split=$1 dir=$2
    shift 2
    OMP_NUM_THREADS=1 launch 3 15356 run_class_finetuning.py \
        --model vit_base_dim512_no_depth_patch16_160 --depth 16 \
        --data_set DFEW --nb_classes 7 --data_path "./saved/data/dfew/org/split0${split}" ${DATA_ROOT:+--data_root "$DATA_ROOT"} \
        ${FINETUNE:+--finetune "$FINETUNE"} --log_dir "$dir" --output_dir "$dir" \
        --batch_size 32 --update_freq "${UPDATE_FREQ:-1}" --num_sample 1 --input_size 160 --short_side_size 160 \
        --save_ckpt_freq 1000 --num_frames 16 --sampling_rate 4 --opt adamw --lr 1e-3 --opt_betas 0.9 0.999 \
        --weight_decay 0.05 --epochs 100 --dist_eval --test_num_segment 2 --test_num_crop 2 --num_workers 16 \
        --attn_type local_global --lg_region_size 2 5 10 --lg_classify_token_type region "$@"
}

run_folds fold_dir run_fold "$@"
