"""Pictures of what a pretraining model reconstructs (--save_recon): input, masked input, reconstruction and the
frame-difference target and prediction, back in pixels."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from einops import rearrange
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from engine_pretrain import PATCHES, VIDEO, Objective


@torch.no_grad()
def reconstruct(model: nn.Module, videos: torch.Tensor, mask: torch.Tensor, objective: Objective
                ) -> dict[str, np.ndarray]:
    """Pixels in [0, 1], each (B, T, H, W, 3): `input`, `masked` (masked patches grey), `reconstruction` (visible
    patches from the input, masked ones predicted); with the frame-difference target also `diff_target` and
    `diff_prediction`, the differences in normalised units (B, T, H, W), predicted on the masked patches only."""
    was_training = model.training
    model.eval()
    pred = model(videos, mask).float()
    model.train(was_training)
    t, h = videos.shape[2:4]
    p, tub = objective.patch_size, objective.tubelet_size
    sizes = dict(p0=tub, p1=p, p2=p)
    grid = dict(t=t // tub, h=h // p)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN)[None, :, None, None, None]
    std = torch.tensor(IMAGENET_DEFAULT_STD)[None, :, None, None, None]
    pixels = (videos.float().cpu() * std + mean).clamp(0, 1)
    mask = mask.cpu()

    everything = torch.ones_like(mask)
    target = objective.targets(videos.float(), everything.to(videos.device)).cpu()  # (B, N, P*3), every token
    predicted = target.clone()
    predicted[mask] = pred.cpu().reshape(-1, pred.shape[-1])

    def to_video(tokens: torch.Tensor) -> torch.Tensor:
        return rearrange(tokens.unflatten(-1, (-1, 3)), VIDEO, **sizes, **grid)

    out = {"input": pixels}
    patch_mask = rearrange(mask[..., None, None].expand(-1, -1, tub * p * p, 3).float(), VIDEO, **sizes, **grid)
    out["masked"] = pixels * (1 - patch_mask) + 0.5 * patch_mask
    group = objective.frame_diff_group_size
    frames = to_video(predicted)
    if group:
        out["diff_target"] = to_video(target)
        out["diff_prediction"] = frames * patch_mask
        first = frames[:, :, ::group].repeat_interleave(group, dim=2)
        first[:, :, ::group] = 0
        frames = frames + first
    patches = rearrange(frames, PATCHES, **sizes)
    if objective.normalize_target:
        raw = rearrange(pixels, PATCHES, **sizes)
        patches = patches * (raw.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6) + raw.mean(-2, keepdim=True)
    out["reconstruction"] = rearrange(patches, VIDEO, **sizes, **grid).clamp(0, 1)
    if group:
        keep = torch.ones(t, dtype=torch.bool)
        keep[::group] = False  # the first frame of a group carries no difference
        for key in ("diff_target", "diff_prediction"):
            out[key] = out[key].mean(1) * keep[None, :, None, None]
    return {k: (v.permute(0, 2, 3, 4, 1) if v.dim() == 5 else v).numpy() for k, v in out.items()}


ROWS = (("input", "input"), ("masked", "masked input"), ("reconstruction", "reconstructed"),
        ("diff_target", "difference: target"), ("diff_prediction", "difference: predicted"))


def save_reconstruction_grid(images: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """One row per picture kind and clip, one column per frame. Differences (on the frames that carry one) share a
    symmetric colour scale per clip, the target's 99th percentile of |difference|."""
    rows = [(key, label) for key, label in ROWS if key in images]
    num_clips, num_frames = images["input"].shape[:2]
    fig, axes = plt.subplots(num_clips * len(rows), num_frames, squeeze=False,
                             figsize=(0.9 * num_frames + 2.0, 0.9 * num_clips * len(rows) + 0.5))
    fig.subplots_adjust(left=1.9 / (0.9 * num_frames + 2.0), right=0.995, bottom=0.005, wspace=0.04, hspace=0.04,
                        top=1 - 0.4 / (0.9 * num_clips * len(rows) + 0.5))
    for clip in range(num_clips):
        limit = 1.0
        if "diff_target" in images:
            limit = max(float(np.percentile(np.abs(images["diff_target"][clip]), 99)), 1e-6)
        for r, (key, label) in enumerate(rows):
            row = clip * len(rows) + r
            for f in range(num_frames):
                ax = axes[row, f]
                ax.set_xticks([])
                ax.set_yticks([])
                if not key.startswith("diff"):
                    ax.imshow(images[key][clip, f])
                elif images["diff_target"][clip, f].any():
                    ax.imshow(images[key][clip, f], cmap="coolwarm", vmin=-limit, vmax=limit)
                else:
                    ax.axis("off")  # the first frame of a group: no difference
            axes[row, 0].axis("on")
            axes[row, 0].set_ylabel(f"clip {clip}: {label}", fontsize=7, rotation=0, ha="right", va="center")
            for side in axes[row, 0].spines.values():
                side.set_visible(not key.startswith("diff") or images["diff_target"][clip, 0].any())
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
