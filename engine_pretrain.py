"""Pretraining: reconstruction targets, loss and the training epoch (docs/ARCHITECTURE.md, "Pretraining").

For each token the target is its tubelet's pixels, normalised per patch and channel; with the frame-difference
target, every frame but the first of each group is replaced by its difference to that first frame (taken after
the normalisation, in normalised units). The loss is the MSE over the masked tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.utils import AverageMeter
from torch import nn
from tqdm import tqdm

import engine
import preemption
import utils
from engine import NonFiniteLossError
from modeling_pretrain import gather_tokens, split_tokens

PATCHES = "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c"
VIDEO = "b (t h w) (p0 p1 p2) c -> b c (t p0) (h p1) (w p2)"


@torch.no_grad()
def reconstruction_targets(videos: torch.Tensor, mask: torch.Tensor, patch_size: int = 16, tubelet_size: int = 2,
                           normalize_target: bool = True, frame_diff_group_size: int | None = None,
                           num_visible: int | None = None) -> torch.Tensor:
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
    if num_visible is None:  # boolean indexing: a host sync, but any mask (e.g. a picture's)
        return targets[mask].reshape(videos.shape[0], -1, targets.shape[-1])
    return gather_tokens(targets, split_tokens(mask, num_visible)[1])


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor,
                        target_diff_weight: float | None = None) -> torch.Tensor:
    """MSE over the masked tokens; with a diff weight w (group size 2): (1-w)·MSE(first frame) + w·MSE(difference)."""
    if target_diff_weight is None:
        return F.mse_loss(pred, target)
    pred, target = pred.unflatten(-1, (2, -1)), target.unflatten(-1, (2, -1))
    return ((1 - target_diff_weight) * F.mse_loss(pred[..., 0, :], target[..., 0, :])
            + target_diff_weight * F.mse_loss(pred[..., 1, :], target[..., 1, :]))


@dataclass(frozen=True)
class Objective:
    """What the decoder reconstructs (the flags --normlize_target, --frame_diff_group_size, --target_diff_weight)."""

    patch_size: int = 16
    tubelet_size: int = 2
    normalize_target: bool = True
    frame_diff_group_size: int | None = None  # None: pixels only
    target_diff_weight: float | None = None

    def targets(self, videos: torch.Tensor, mask: torch.Tensor, num_visible: int | None = None) -> torch.Tensor:
        return reconstruction_targets(videos, mask, self.patch_size, self.tubelet_size, self.normalize_target,
                                      self.frame_diff_group_size, num_visible)

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return reconstruction_loss(pred, target, self.target_diff_weight)


def visible_count(mask: torch.Tensor) -> int:
    """The visible tokens per clip of a (CPU) batch of masks, which must all leave the same number."""
    counts = set((~mask.flatten(1).bool()).sum(1).tolist())
    if len(counts) != 1:
        raise ValueError(f"the masks of a batch leave different numbers of visible tokens: {sorted(counts)}")
    return counts.pop()


def split_samples(videos: torch.Tensor, mask: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """--num_samples k: a clip of k*T frames becomes k clips of T frames (adjacent), each with the clip's mask."""
    if num_samples == 1:
        return videos, mask
    videos = rearrange(videos, "b c (k t) h w -> (b k) c t h w", k=num_samples)
    return videos, mask.repeat_interleave(num_samples, dim=0)


def train_one_epoch(model: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, epoch: int, objective: Objective,
                    precision: engine.Precision = engine.FLOAT32, schedule: utils.Schedule | None = None,
                    global_step_offset: int = 0, resume_step: int = 0, meters: dict[str, AverageMeter] | None = None,
                    num_samples: int = 1, max_norm: float | None = None, log_writer=None,
                    on_step: Callable | None = None, bad_samples=None) -> dict[str, float]:
    """One pretraining epoch with per-step LR / weight-decay schedules; returns the epoch averages over all ranks.

    Resuming: the loader yields what is left of the epoch after `resume_step` steps and `meters` holds their
    averages; `on_step(step, meters)` runs after every step (e.g. a checkpoint). Unreadable videos of a batch
    (a dataset with skip_bad) go to `bad_samples`; the step trains on the others (all processes skip a step in
    which one of them has none). A non-finite loss on any process raises NonFiniteLossError on all of them,
    naming the step and the loss; under fp16 the grad scaler skips steps whose gradients overflow (counted in
    `skipped_steps`), as the original's scaler does. When a process received a stop signal, every process raises
    preemption.StopRequested at the same step boundary.
    """
    model.train()
    meters = meters or engine.new_meters()
    scaler = precision.scaler
    agreement = engine.StepAgreement()
    progress = tqdm(data_loader, desc=f"epoch {epoch}", disable=not utils.is_main_process(), dynamic_ncols=True,
                    initial=resume_step, total=resume_step + len(data_loader))
    for step, batch in enumerate(progress, resume_step):
        global_step = global_step_offset + step
        videos, mask = engine.unpack_batch(batch, 2, bad_samples)
        ready = agreement.before_forward(len(videos) > 0, bad_samples)
        if agreement.stop:  # every process stops before this step
            raise preemption.StopRequested(step, meters)
        if not ready:  # a process's videos were all unreadable
            meters["skipped_steps"].update(1)
            if on_step is not None:
                on_step(step + 1, meters)
            continue
        engine.apply_schedules(optimizer, global_step, schedule)
        num_visible = visible_count(mask)  # on the host, from the loader's mask: the device waits for nothing
        videos, mask = split_samples(videos.to(device, non_blocking=True), mask.to(device, non_blocking=True),
                                     num_samples)
        target = objective.targets(videos, mask, num_visible)
        with precision.autocast(device):
            loss = objective.loss(model(videos, mask, num_visible), target)
        loss_value = loss.item()
        bad_value, bad_rank = agreement.after_forward(loss_value)
        if bad_rank is not None:
            raise NonFiniteLossError(engine.non_finite_message(bad_value, bad_rank, epoch, step, global_step))

        optimizer.zero_grad()
        (scaler.scale(loss) if scaler is not None else loss).backward()
        grad_norm = engine.optimizer_step(model, optimizer, scaler, max_norm)
        if grad_norm is None:
            meters["skipped_steps"].update(1)

        lrs = [g["lr"] for g in optimizer.param_groups]
        values = dict(loss=loss_value, loss_scale=scaler.get_scale() if scaler is not None else 1.0, lr=max(lrs),
                      min_lr=min(lrs), weight_decay=max(g["weight_decay"] for g in optimizer.param_groups),
                      grad_norm=grad_norm)
        for name, value in values.items():
            if value is not None:
                meters[name].update(value)
        progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{max(lrs):.2e}")
        if log_writer is not None:
            for name, value in values.items():
                if value is not None:
                    log_writer.add_scalar(("loss/" if name == "loss" else "opt/") + name, value, global_step)
        if on_step is not None:
            on_step(step + 1, meters)
    return engine.epoch_stats(meters)
