#!/usr/bin/env bash
# VoxCeleb2 pretraining, the original recipe: 90% part-window masking, pixel + frame-difference targets, LGI-Former
# encoder (16 blocks, regions 2x5x10), 100 epochs, lr 3e-4 per 256 clips. Batch 32 per process; the original
# script ran 2 processes (global batch 64), the released checkpoint was trained with global batch 160 (5 x 32):
# NPROC_PER_NODE=5 reproduces it. Extra flags are passed through ("$@").
# On Slurm: RECIPE=voxceleb2 sbatch [Slurm options] scripts/slurm/pretrain.sbatch (docs/SLURM.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/launch.sh
MODEL=pretrain_videomae_base_dim512_no_depth_patch16_160
RUN=videomae_pretrain_base_dim512_local_global_attn_depth16_region_size2510_patch16_160_frame_16x4_tube_mask_ratio_0.9_e100_with_diff_target_server102
OUTPUT_DIR=${OUTPUT_DIR:-./saved/model/pretraining/voxceleb2/${RUN}}
mkdir -p "$OUTPUT_DIR"
OMP_NUM_THREADS=1 launch 2 17320 run_mae_pretraining.py \
    --model "$MODEL" --encoder_depth 16 --decoder_depth 4 \
    --data_path "${DATA_PATH:-./saved/data/voxceleb2/info_clean.csv}" ${DATA_ROOT:+--data_root "$DATA_ROOT"} \
    --log_dir "$OUTPUT_DIR" --output_dir "$OUTPUT_DIR" \
    --mask_type part_window --part_win_size 2 5 10 --mask_ratio 0.9 --input_size 160 \
    --attn_type local_global --lg_region_size 2 5 10 --use_frame_diff_as_target \
    --batch_size 32 --num_frames 16 --sampling_rate 4 --num_workers 20 \
    --opt adamw --opt_betas 0.9 0.95 --lr 3e-4 --warmup_epochs 5 --epochs 100 --save_ckpt_freq 10 "$@" \
    2>&1 | tee -a "$OUTPUT_DIR/nohup.out"
