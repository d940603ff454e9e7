"""Tiny model configurations, the scripts' full-size keyword arguments and the original checkpoints' key lists
(tests/data/keys), shared by the model and checkpoint tests."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import nn

# Parameter names and shapes of the original checkpoints, and their FLOPs (copied into the repository).
SPEC_KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=5, all_frames=8, tubelet_size=2,
            init_scale=0.001, attn_type="local_global", lg_region_size=(2, 2, 2), lg_classify_token_type="region")

# The scripts' configuration (MAE-DFER `scripts/dfew/`), as run_class_finetuning.py passes it to create_model (written
# out here, not taken from models.FULL_SIZE, so that the tests check it).
SCRIPT_KWARGS = dict(pretrained=False, num_classes=7, all_frames=16, tubelet_size=2, drop_rate=0.0, drop_path_rate=0.1,
                     attn_drop_rate=0.0, drop_block_rate=None, use_mean_pooling=True, init_scale=0.001, depth=16,
                     attn_type="local_global", lg_region_size=[2, 5, 10], lg_first_attn_type="self",
                     lg_third_attn_type="cross", lg_attn_param_sharing_first_third=False,
                     lg_attn_param_sharing_all=False, lg_classify_token_type="region", lg_no_second=False,
                     lg_no_third=False)


def read_keys(name: str, depth: int | None = None) -> list[tuple[str, list[int]]]:
    """(name, shape) pairs of an original checkpoint; with `depth`, only (encoder) blocks below it are kept."""
    pairs = []
    for line in (SPEC_KEYS / name).read_text().splitlines():
        key, shape = line.split()
        parts = key.split(".")
        in_encoder_block = "blocks" in parts and not key.startswith("decoder.")
        if depth is not None and in_encoder_block and int(parts[parts.index("blocks") + 1]) >= depth:
            continue
        pairs.append((key, [int(s) for s in shape.strip("[]").split(",") if s]))
    return pairs


def random_state_dict(pairs: list[tuple[str, list[int]]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of the given names and shapes (BN counters int64, variances positive)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in pairs:
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(100, dtype=torch.int64)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            out[key] = torch.randn(shape, generator=gen) * 0.05
    return out
