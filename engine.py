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
    """Training produced a NaN or infinite loss."""


def autocast(device: torch.device, amp: str):
    """Mixed-precision context for --amp none | fp16 | bf16."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def train_one_epoch(model: nn.Module, criterion: Callable, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, scaler: torch.amp.GradScaler | None, amp: str,
                    max_norm: float | None = None, model_ema=None, mixup_fn=None, log_writer=None,
                    start_steps: int = 0, lr_schedule_values=None, wd_schedule_values=None,
                    num_training_steps_per_epoch: int | None = None, update_freq: int = 1) -> dict[str, float]:
    """One epoch of (mixup) training with per-step LR / weight-decay schedules and gradient accumulation."""
    model.train()
    meters = {k: AverageMeter() for k in ("loss", "grad_norm", "loss_scale", "lr", "min_lr", "weight_decay")}
    optimizer.zero_grad()
    progress = tqdm(data_loader, desc=f"epoch {epoch}", disable=not utils.is_main_process(), dynamic_ncols=True)
    for data_iter_step, (samples, targets) in enumerate(progress):
        step = data_iter_step // update_freq
        if num_training_steps_per_epoch is not None and step >= num_training_steps_per_epoch:
            continue
        it = start_steps + step
        if data_iter_step % update_freq == 0 and lr_schedule_values is not None:
            for group in optimizer.param_groups:
                group["lr"] = float(lr_schedule_values[it]) * group.get("lr_scale", 1.0)
                if wd_schedule_values is not None and group["weight_decay"] > 0:
                    group["weight_decay"] = float(wd_schedule_values[it])

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
            raise NonFiniteLossError(f"loss is {loss_value} at epoch {epoch}, step {step} (global step {it})")

        loss = loss / update_freq
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if (data_iter_step + 1) % update_freq == 0:
            if scaler is not None:
                scaler.unscale_(optimizer)
            parameters = [p for p in model.parameters() if p.grad is not None]
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm if max_norm else float("inf"))
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad()
            if model_ema is not None:
                model_ema.update(model)
            meters["grad_norm"].update(grad_norm.item())

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
    return {name: meter.avg for name, meter in meters.items()}


@torch.no_grad()
def evaluate(data_loader: Iterable, model: nn.Module, device: torch.device, amp: str, num_classes: int) -> dict:
    """Validation: hard-label cross-entropy, acc@1/5 and UAR/WAR/F1 over every clip (gathered across ranks)."""
    model.eval()
    records = []
    for samples, targets, ids in tqdm(data_loader, desc="validation", disable=not utils.is_main_process(),
                                      dynamic_ncols=True):
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
