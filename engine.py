"""Fine-tuning step loops: one training epoch, validation, and the multi-view final test."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
from timm.utils import AverageMeter
from torch import nn
from tqdm import tqdm

import utils
from metrics import classification_metrics


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss (without fp16 loss scaling, which skips such steps instead)."""


METERS = ("loss", "grad_norm", "loss_scale", "lr", "min_lr", "weight_decay")


def meters_state(meters: dict[str, AverageMeter]) -> dict[str, list[float]]:
    """The running averages of an unfinished epoch, for a step-level checkpoint."""
    return {name: [m.val, m.sum, m.count] for name, m in meters.items()}


def new_meters(state: dict[str, list[float]] | None = None) -> dict[str, AverageMeter]:
    """Fresh meters, or the ones `meters_state` saved."""
    meters = {k: AverageMeter() for k in (*METERS, "skipped_steps")}
    for name, (val, total, count) in (state or {}).items():
        meters[name].val, meters[name].sum, meters[name].count = val, total, count
        meters[name].avg = total / count if count else 0
    return meters


def apply_schedules(optimizer: torch.optim.Optimizer, it: int, lr_schedule_values=None,
                    wd_schedule_values=None) -> None:
    """Global step `it`'s learning rate (times a group's lr_scale) and weight decay (groups that decay)."""
    if lr_schedule_values is None:
        return
    for group in optimizer.param_groups:
        group["lr"] = float(lr_schedule_values[it]) * group.get("lr_scale", 1.0)
        if wd_schedule_values is not None and group["weight_decay"] > 0:
            group["weight_decay"] = float(wd_schedule_values[it])


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                   max_norm: float | None, meters: dict[str, AverageMeter]) -> float:
    """Unscale, clip to max_norm (or only measure) the gradient norm, step; under fp16 the scaler skips a step whose
    gradients overflowed (counted in meters["skipped_steps"]) and updates its scale. Returns the gradient norm."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    parameters = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm if max_norm else float("inf")).item()
    if scaler is None:
        optimizer.step()
        return grad_norm
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    meters["skipped_steps"].update(int(scaler.get_scale() < scale))
    return grad_norm


def autocast(device: torch.device, amp: str):
    """Mixed-precision context for --amp none | fp16 | bf16."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def train_one_epoch(model: nn.Module, criterion: Callable, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, scaler: torch.amp.GradScaler | None, amp: str,
                    max_norm: float | None = None, model_ema=None, mixup_fn=None, log_writer=None,
                    start_steps: int = 0, lr_schedule_values=None, wd_schedule_values=None,
                    num_training_steps_per_epoch: int | None = None, update_freq: int = 1, start_step: int = 0,
                    meters: dict[str, AverageMeter] | None = None, on_step: Callable | None = None,
                    bad_samples=None) -> dict[str, float]:
    """One epoch of (mixup) training with per-step LR / weight-decay schedules and gradient accumulation.

    Resuming: the loader yields what is left of the epoch after `start_step` optimizer steps and `meters` holds
    their averages. `on_step(step, meters)` runs after each optimizer step (e.g. a checkpoint). Batches from a
    dataset with skip_bad end with their unreadable entries, handed to `bad_samples.add`. Under fp16 loss
    scaling a step with a non-finite loss or gradient is skipped and counted (skipped_steps), as GradScaler does;
    otherwise a non-finite loss raises NonFiniteLossError.
    """
    model.train()
    meters = meters or new_meters()
    optimizer.zero_grad()
    progress = tqdm(data_loader, desc=f"epoch {epoch}", disable=not utils.is_main_process(), dynamic_ncols=True,
                    initial=start_step * update_freq, total=start_step * update_freq + len(data_loader))
    skip = False  # this step met a non-finite loss under loss scaling
    for data_iter_step, batch in enumerate(progress, start_step * update_freq):
        samples, targets = unpack_batch(batch, 2, bad_samples)
        step = data_iter_step // update_freq
        if num_training_steps_per_epoch is not None and step >= num_training_steps_per_epoch:
            continue
        it = start_steps + step
        if data_iter_step % update_freq == 0:
            apply_schedules(optimizer, it, lr_schedule_values, wd_schedule_values)

        loss_value = float("nan")
        if mixup_fn is not None and len(samples) % 2:  # timm's batch mixup pairs clips: drop one after a skipped one
            samples, targets = samples[:-1], targets[:-1]
        if len(samples):
            samples = samples.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if mixup_fn is not None:
                # timm's Mixup cuts one box per batch out of (B, C, H, W): viewing the clip's channels and frames as
                # one axis applies the same box to every frame, as the video mixup of the original.
                mixed, targets = mixup_fn(samples.flatten(1, 2), targets)
                samples = mixed.view_as(samples)
            with autocast(device, amp):
                loss = criterion(model(samples), targets)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                if scaler is None:
                    raise NonFiniteLossError(f"loss is {loss_value} at epoch {epoch}, step {step} (global step {it})")
                skip = True
            if not skip:
                loss = loss / update_freq
                (scaler.scale(loss) if scaler is not None else loss).backward()
        if (data_iter_step + 1) % update_freq == 0:
            if skip:
                # What GradScaler does with an overflow: no update, a smaller scale.
                scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
                meters["skipped_steps"].update(1)
            else:
                grad_norm = optimizer_step(model, optimizer, scaler, max_norm, meters)
                if model_ema is not None:
                    model_ema.update(model)
                meters["grad_norm"].update(grad_norm)
            optimizer.zero_grad()
            skip = False

        if math.isfinite(loss_value):
            meters["loss"].update(loss_value)
            meters["loss_scale"].update(scaler.get_scale() if scaler is not None else 1.0)
            lrs = [g["lr"] for g in optimizer.param_groups]
            meters["lr"].update(max(lrs))
            meters["min_lr"].update(min(lrs))
            meters["weight_decay"].update(max(g["weight_decay"] for g in optimizer.param_groups))
            progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{max(lrs):.2e}")
            if log_writer is not None:
                for name, value in (("loss/loss", loss_value), ("opt/lr", max(lrs)), ("opt/min_lr", min(lrs)),
                                    ("opt/loss_scale", meters["loss_scale"].val),
                                    ("opt/weight_decay", meters["weight_decay"].val),
                                    ("opt/grad_norm", meters["grad_norm"].val)):
                    log_writer.add_scalar(name, value, it)
        if on_step is not None and (data_iter_step + 1) % update_freq == 0:
            on_step(step + 1, meters)
    stats = {name: meter.avg for name, meter in meters.items()}
    stats["skipped_steps"] = int(meters["skipped_steps"].sum)
    return stats


def unpack_batch(batch, fields: int, bad_samples) -> tuple:
    """A batch's `fields` entries. A trailing list of unreadable entries (collate_skipping_bad) goes to
    `bad_samples.add`; a batch of unreadable entries only gives empty fields."""
    if len(batch) in (1, fields + 1):
        *batch, bad = batch
        if bad_samples is not None:
            bad_samples.add(bad)
    if not batch:
        return (torch.empty(0), torch.empty(0, dtype=torch.long), *[[] for _ in range(fields - 2)])
    return tuple(batch)


@torch.no_grad()
def evaluate(data_loader: Iterable, model: nn.Module, device: torch.device, amp: str, num_classes: int,
             bad_samples=None) -> dict:
    """Validation: hard-label cross-entropy, acc@1/5 and UAR/WAR/F1 over every readable clip (gathered across
    ranks); unreadable ones (skip_bad) go to `bad_samples.add`."""
    model.eval()
    records = []
    for batch in tqdm(data_loader, desc="validation", disable=not utils.is_main_process(), dynamic_ncols=True):
        samples, targets, ids = unpack_batch(batch, 3, bad_samples)
        if not len(samples):
            continue
        samples, targets = samples.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(samples)
        logits = logits.float()
        losses = nn.functional.cross_entropy(logits, targets, reduction="none")
        ranked = logits.topk(min(5, num_classes), dim=1).indices
        for clip_id, label, loss, row in zip(ids, targets.tolist(), losses.tolist(), ranked.tolist()):
            records.append((clip_id, label, loss, row))
    # Gather every rank's clips and drop the duplicates a DistributedSampler pads with.
    unique = {}
    for rank_records in utils.all_gather_objects(records):
        for clip_id, label, loss, ranked in rank_records:
            unique.setdefault(clip_id, (label, loss, ranked))
    labels = np.array([v[0] for v in unique.values()])
    ranked = np.array([v[2] for v in unique.values()])
    stats = classification_metrics(labels, ranked[:, 0], num_classes)
    return {"loss": float(np.mean([v[1] for v in unique.values()])),
            "acc1": float(100 * (ranked[:, 0] == labels).mean()),
            "acc5": float(100 * (ranked == labels[:, None]).any(axis=1).mean()),
            **{k: stats[k] for k in ("uar", "war", "weighted_f1", "micro_f1", "macro_f1")},
            "num_clips": len(unique)}


@torch.no_grad()
def predict_views(data_loader: Iterable, model: nn.Module, device: torch.device,
                  amp: str) -> list[tuple[str, int, int, int, np.ndarray]]:
    """Softmax probabilities (float64) of every test view on this rank: (clip id, label, chunk, crop, probs)."""
    model.eval()
    records = []
    for samples, targets, ids, chunks, crops in tqdm(data_loader, desc="test", disable=not utils.is_main_process(),
                                                     dynamic_ncols=True):
        with autocast(device, amp):
            logits = model(samples.to(device, non_blocking=True))
        probs = torch.softmax(logits.double(), dim=1).cpu().numpy()
        records += list(zip(ids, targets.tolist(), chunks.tolist(), crops.tolist(), probs))
    return records
