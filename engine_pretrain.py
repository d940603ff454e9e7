"""Pretraining targets and loss: normalised pixels and frame differences of the masked tubelets.

For each token the target is its tubelet's pixels, normalised per patch and channel; with the frame-difference
target, every frame but the first of each group is replaced by its difference to that first frame (taken after
the normalisation, in normalised units). `shared/spec/pretraining.md` §1.4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

PATCHES = "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c"
VIDEO = "b (t h w) (p0 p1 p2) c -> b c (t p0) (h p1) (w p2)"


@torch.no_grad()
def reconstruction_targets(videos: torch.Tensor, mask: torch.Tensor, patch_size: int = 16, tubelet_size: int = 2,
                           normalize_target: bool = True, frame_diff_group_size: int | None = None) -> torch.Tensor:
    """Targets (B, N_masked, tubelet*patch*patch*C) of the masked tokens, in (p0, p1, p2, c) order, c fastest.

    videos: ImageNet-normalised clips (B, C, T, H, W); mask: (B, N) with True = masked.
    """
    mean = torch.as_tensor(IMAGENET_DEFAULT_MEAN, device=videos.device, dtype=videos.dtype)[None, :, None, None, None]
    std = torch.as_tensor(IMAGENET_DEFAULT_STD, device=videos.device, dtype=videos.dtype)[None, :, None, None, None]
    pixels = videos * std + mean
    sizes = dict(p0=tubelet_size, p1=patch_size, p2=patch_size)
    patches = rearrange(pixels, PATCHES, **sizes)
    if normalize_target:
        patches = (patches - patches.mean(dim=-2, keepdim=True)) / (
            patches.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    if frame_diff_group_size:
        grid = dict(t=videos.shape[2] // tubelet_size, h=videos.shape[3] // patch_size)
        frames = rearrange(patches, VIDEO, **sizes, **grid)
        first = frames[:, :, ::frame_diff_group_size].repeat_interleave(frame_diff_group_size, dim=2)
        diffs = frames - first
        diffs[:, :, ::frame_diff_group_size] = frames[:, :, ::frame_diff_group_size]
        patches = rearrange(diffs, PATCHES, **sizes)
    targets = patches.flatten(2)
    return targets[mask].reshape(videos.shape[0], -1, targets.shape[-1])


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor,
                        target_diff_weight: float | None = None) -> torch.Tensor:
    """MSE over the masked tokens; with a diff weight w (group size 2): (1-w)·MSE(first frame) + w·MSE(difference)."""
    if target_diff_weight is None:
        return F.mse_loss(pred, target)
    pred, target = pred.unflatten(-1, (2, -1)), target.unflatten(-1, (2, -1))
    return ((1 - target_diff_weight) * F.mse_loss(pred[..., 0, :], target[..., 0, :])
            + target_diff_weight * F.mse_loss(pred[..., 1, :], target[..., 1, :]))
