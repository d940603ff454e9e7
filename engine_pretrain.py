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

import distributed
import engine
import preemption
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
    """What the decoder reconstructs (the flags --normlize_target, --frame_diff_group_size, --target_diff_weight),
    and from how many clips per loaded video (--num_samples: adjacent clips of one loaded sequence)."""

    patch_size: int = 16
    tubelet_size: int = 2
    normalize_target: bool = True
    frame_diff_group_size: int | None = None  # None: pixels only
    target_diff_weight: float | None = None
    num_samples: int = 1

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


@dataclass
class PretrainBatch:
    """A pretraining batch as the step uses it: videos and masks on the device, the visible tokens per clip counted
    on the host from the loader's masks (the device waits for nothing), and the batch's unreadable entries."""

    videos: torch.Tensor
    mask: torch.Tensor
    num_visible: int
    bad: list

    def __len__(self) -> int:
        return len(self.videos)


def to_device(batch, device: torch.device) -> PretrainBatch:
    """A loader batch (videos, masks, maybe a trailing list of unreadable entries) with its tensors sent to the
    device (non-blocking)."""
    bad = batch[-1] if len(batch) in (1, 3) else []
    if len(batch) in (0, 1):
        return PretrainBatch(torch.empty(0), torch.empty(0), 0, bad)
    videos, mask = batch[0], batch[1]
    return PretrainBatch(videos.to(device, non_blocking=True), mask.to(device, non_blocking=True),
                         visible_count(mask), bad)


def pretrain_step(model: nn.Module, batch: PretrainBatch, optimizer: torch.optim.Optimizer, *, objective: Objective,
                  recipe: engine.StepRecipe) -> dict:
    """Targets, forward, loss, backward and the optimizer step; returns the step's record fields (on the device)."""
    videos, mask = split_samples(batch.videos, batch.mask, objective.num_samples)
    target = objective.targets(videos, mask, batch.num_visible)
    with recipe.precision.autocast(videos.device):
        loss = objective.loss(model(videos, mask, batch.num_visible), target)
    scaler = recipe.precision.scaler
    optimizer.zero_grad()
    (scaler.scale(loss) if scaler is not None else loss).backward()
    grad_norm, skipped = engine.optimizer_step(model, optimizer, scaler, recipe.max_norm)
    return {"trained": True, "loss": loss.detach(), "grad_norm": grad_norm,
            "skipped": 0.0 if skipped is None else skipped, "scale": engine.scale_of(scaler)}


def train_one_epoch(model: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, objective: Objective, recipe: engine.StepRecipe = engine.PLAIN_STEPS,
                    start: engine.EpochStart = engine.FIRST_EPOCH, log_writer=None, on_step: Callable | None = None,
                    bad_samples=None) -> dict[str, float]:
    """One pretraining epoch with per-step LR / weight-decay schedules; returns the epoch averages over all ranks.

    `start` says where the epoch begins: resumed part-way, the loader yields what is left of it after `start.step` steps
    and `start.meters` holds their averages; `on_step(step, meters)` runs after a step (e.g. a checkpoint; see
    `engine.train_one_epoch`). Unreadable videos of a batch go to `bad_samples`; the step trains on the others (all
    processes skip a step in which one of them has none). A non-finite loss on any process raises NonFiniteLossError on
    all of them within `recipe.log_every` steps, naming the step and the loss; under fp16 the grad scaler skips steps
    whose gradients overflow (counted in `skipped_steps`), as the original's scaler does. When a process received a stop
    signal, every process raises preemption.StopRequested at the same step boundary.
    """
    model.train()
    meters = start.meters or engine.new_meters()
    agreement = engine.StepAgreement()
    log = engine.StepLog(lambda record: replay(meters, record, progress, log_writer), epoch=start.epoch,
                         every=recipe.log_every, agreement=agreement, stop_on_non_finite=True)
    progress = tqdm(data_loader, desc=f"epoch {start.epoch}", disable=not distributed.is_main_process(),
                    dynamic_ncols=True, initial=start.step, total=start.step + len(data_loader))
    batches = engine.prefetched(progress, lambda batch: to_device(batch, device), device)
    for step, batch in enumerate(batches, start.step):
        if bad_samples is not None:
            bad_samples.record(batch.bad)
        global_step = start.global_step_offset + step
        record = {"step": step, "global_step": global_step, "trained": False}
        agreed = agreement.before_forward(len(batch) > 0, bad_samples, stop=preemption.requested())
        if agreed["stop"]:  # every process stops before this step
            log.flush()
            raise preemption.StopRequested(step, meters)
        if agreed["train"]:  # else a process's videos were unreadable
            engine.apply_schedules(optimizer, global_step, recipe.schedule)
            record.update(pretrain_step(model, batch, optimizer, objective=objective, recipe=recipe),
                          **engine.schedule_values(optimizer))
        log.add(record)
        due = on_step is not None and getattr(on_step, "due", lambda _: True)(step + 1)
        log.end_of_step(flush_now=due)
        if due:
            on_step(step + 1, meters)
    log.flush()
    return engine.epoch_stats(meters)


def replay(meters: dict[str, AverageMeter], record: dict, progress, log_writer) -> None:
    """A read step into the meters, the progress bar and TensorBoard."""
    if not record["trained"] or record["skipped"]:
        meters["skipped_steps"].update(1)
    if not record["trained"]:
        return
    values = dict(loss=record["loss"], loss_scale=record["scale"], lr=record["lr"], min_lr=record["min_lr"],
                  weight_decay=record["weight_decay"], grad_norm=None if record["skipped"] else record["grad_norm"])
    for name, value in values.items():
        if value is not None:
            meters[name].update(value)
            if log_writer is not None:
                log_writer.add_scalar(("loss/" if name == "loss" else "opt/") + name, value, record["global_step"])
    progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
