"""Fine-tuning step loops: one training epoch, validation, and the multi-view final test.

Every process of a multi-process run takes the same path through a step: before a forward they agree whether each
has clips and whether any met too many unreadable ones, after it whether every loss is finite (`StepAgreement`),
so no process ever waits in a collective that another one skipped.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from timm.utils import AverageMeter
from torch import nn
from tqdm import tqdm

import preemption
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


def epoch_stats(meters: dict[str, AverageMeter]) -> dict[str, float]:
    """The epoch's averages over every step of every process (a collective), and the skipped steps (the same on
    every process: they agree on each step)."""
    names = [name for name in meters if name != "skipped_steps"]
    totals = torch.tensor([[meters[n].sum, meters[n].count] for n in names], dtype=torch.float64,
                          device=utils.collective_device())
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    stats = {name: float(total / count) if count else float("nan")
             for name, (total, count) in zip(names, totals.tolist())}
    return {**stats, "skipped_steps": int(meters["skipped_steps"].sum)}


@dataclass(frozen=True)
class Precision:
    """--amp none | fp16 | bf16, and the fp16 loss scaler (None otherwise)."""

    amp: str = "none"
    scaler: torch.amp.GradScaler | None = None

    def autocast(self, device: torch.device):
        return autocast(device, self.amp)


FLOAT32 = Precision()  # no autocast, no loss scaling


def autocast(device: torch.device, amp: str):
    """Mixed-precision context for --amp none | fp16 | bf16."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def apply_schedules(optimizer: torch.optim.Optimizer, global_step: int, schedule: utils.Schedule | None) -> None:
    """The step's learning rate (times a group's lr_scale) and weight decay (groups that decay)."""
    if schedule is None:
        return
    for group in optimizer.param_groups:
        group["lr"] = float(schedule.lr[global_step]) * group.get("lr_scale", 1.0)
        if group["weight_decay"] > 0:
            group["weight_decay"] = float(schedule.weight_decay[global_step])


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                   max_norm: float | None) -> float | None:
    """Unscale, clip to max_norm (or only measure) the gradient norm, step. Under fp16 the scaler skips a step whose
    gradients overflowed and lowers its scale: then None, else the gradient norm."""
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
    return None if scaler.get_scale() < scale else grad_norm


def skip_scaled_step(scaler: torch.amp.GradScaler, loss: torch.Tensor) -> None:
    """What GradScaler does with an overflow, for a step whose loss was already non-finite: no update, a smaller
    scale. (`scale` first: the scaler makes its scale lazily, and `update` before any `scale` would fail.)"""
    scaler.scale(loss)
    scaler.update(scaler.get_scale() * scaler.get_backoff_factor())


class StepAgreement:
    """What the processes of a run must agree on at every micro-batch, so that all take the same path.

    `before_forward`: does every process have clips, did any meet more unreadable ones than allowed (then all
    raise, listing everyone's), and did any receive a stop signal (then `stop`: preemption.py)? `after_forward`: is
    every loss finite? One small all-reduce / all-gather each; a one-process run makes none.
    """

    def __init__(self):
        self.device = utils.collective_device()
        self.distributed = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
        self.stop = False  # some process received a stop signal (as of the last before_forward)

    def before_forward(self, has_data: bool, bad_samples) -> bool:
        """True when every process has clips for this micro-batch (else all skip it)."""
        exceeded = bad_samples is not None and bad_samples.exceeded
        if not self.distributed:
            self.stop = preemption.requested()
            if exceeded:
                bad_samples.check()
            return has_data
        flags = torch.tensor([int(not has_data), int(exceeded), int(preemption.requested())], device=self.device)
        torch.distributed.all_reduce(flags)
        missing, exceeded_anywhere, stop = flags.tolist()
        self.stop = stop > 0
        if exceeded_anywhere:
            seen = {k: v for rank_seen in utils.all_gather_objects(bad_samples.seen) for k, v in rank_seen.items()}
            bad_samples.check(seen)
        return missing == 0

    def after_forward(self, loss_value: float) -> tuple[float, int | None]:
        """The first non-finite loss over the processes and its rank (None: every loss is finite)."""
        if not self.distributed:
            return loss_value, None if math.isfinite(loss_value) else 0
        values = torch.tensor([loss_value], dtype=torch.float64, device=self.device)
        gathered = [torch.empty_like(values) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(gathered, values)
        for rank, value in enumerate(torch.cat(gathered).tolist()):
            if not math.isfinite(value):
                return value, rank
        return loss_value, None


def sync_buffers(model: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics), which DDP only does at the start of a forward:
    after an epoch all processes then evaluate and test the model the checkpoint holds."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, 0)


def non_finite_message(value: float, rank: int, epoch: int, step: int, global_step: int) -> str:
    where = f" on process {rank}" if torch.distributed.is_initialized() else ""
    return f"loss is {value}{where} at epoch {epoch}, step {step} (global step {global_step})"


def train_one_epoch(model: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, epoch: int, criterion: Callable,
                    precision: Precision = FLOAT32, schedule: utils.Schedule | None = None,
                    global_step_offset: int = 0, resume_step: int = 0, meters: dict[str, AverageMeter] | None = None,
                    update_freq: int = 1, max_norm: float | None = None, model_ema=None, mixup_fn=None,
                    log_writer=None, on_step: Callable | None = None, bad_samples=None,
                    augment: Callable | None = None) -> dict[str, float]:
    """One epoch of (mixup) training with per-step LR / weight-decay schedules and gradient accumulation.

    With `augment` (`--augment_on device`: augment_device.DeviceAugment) the loader gives uint8 clips and their
    drawn augmentation parameters, augmented here, on the device, before mixup.

    Resuming: the loader yields what is left of the epoch after `resume_step` optimizer steps and `meters` holds
    their averages. `on_step(step, meters)` runs after each optimizer step (e.g. a checkpoint). Batches from a
    dataset with skip_bad end with their unreadable entries, handed to `bad_samples`. Under fp16 loss scaling a
    step with a non-finite loss or gradient is skipped and counted (skipped_steps), as GradScaler does; otherwise
    a non-finite loss raises NonFiniteLossError. Gradients are all-reduced once per optimizer step (DDP's
    `no_sync` on the other micro-batches). Returns the epoch averages over every process. When a process received
    a stop signal, every process raises preemption.StopRequested at the same step boundary.
    """
    model.train()
    meters = meters or new_meters()
    scaler = precision.scaler
    agreement = StepAgreement()
    optimizer.zero_grad()
    progress = tqdm(data_loader, desc=f"epoch {epoch}", disable=not utils.is_main_process(), dynamic_ncols=True,
                    initial=resume_step * update_freq, total=resume_step * update_freq + len(data_loader))
    skip = False  # this optimizer step met a non-finite loss under loss scaling
    trained = False  # some micro-batch of this optimizer step had clips on every process
    steps_per_epoch = schedule.steps_per_epoch if schedule is not None else None
    for micro_step, batch in enumerate(progress, resume_step * update_freq):
        if augment is None:
            samples, targets = unpack_batch(batch, 2, bad_samples)
            params = None
        else:
            samples, params, targets = unpack_batch(batch, 3, bad_samples)
        step = micro_step // update_freq
        if steps_per_epoch is not None and step >= steps_per_epoch:
            continue
        global_step = global_step_offset + step
        last_micro_step = (micro_step + 1) % update_freq == 0
        if micro_step % update_freq == 0:
            apply_schedules(optimizer, global_step, schedule)

        loss_value = float("nan")
        if mixup_fn is not None and len(samples) % 2:  # timm's batch mixup pairs clips: drop one after a skipped one
            samples, targets = samples[:-1], targets[:-1]
            params = None if params is None else {k: v[:-1] for k, v in params.items()}
        ready = agreement.before_forward(len(samples) > 0, bad_samples)
        if agreement.stop and micro_step % update_freq == 0:  # every process stops before this step
            raise preemption.StopRequested(step, meters)
        if ready:
            trained = True
            samples = samples.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if augment is not None:
                samples = augment(samples, params)
            if mixup_fn is not None:
                # timm's Mixup cuts one box per batch out of (B, C, H, W): viewing the clip's channels and frames as
                # one axis applies the same box to every frame, as the video mixup of the original.
                mixed, targets = mixup_fn(samples.flatten(1, 2), targets)
                samples = mixed.view_as(samples)
            sync = last_micro_step or not hasattr(model, "no_sync")
            with contextlib.nullcontext() if sync else model.no_sync():
                with precision.autocast(device):
                    loss = criterion(model(samples), targets)
                loss_value = loss.item()
                bad_value, bad_rank = agreement.after_forward(loss_value)
                if bad_rank is not None:
                    if scaler is None:
                        raise NonFiniteLossError(non_finite_message(bad_value, bad_rank, epoch, step, global_step))
                    if not skip:
                        skip_scaled_step(scaler, loss)
                    skip = True
                if not skip:
                    loss = loss / update_freq
                    (scaler.scale(loss) if scaler is not None else loss).backward()
        if last_micro_step:
            grad_norm = optimizer_step(model, optimizer, scaler, max_norm) if trained and not skip else None
            if grad_norm is None:
                meters["skipped_steps"].update(1)
            else:
                if model_ema is not None:
                    model_ema.update(model)
                meters["grad_norm"].update(grad_norm)
            optimizer.zero_grad()
            skip = trained = False

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
                    log_writer.add_scalar(name, value, global_step)
        if on_step is not None and last_micro_step:
            on_step(step + 1, meters)
    sync_buffers(model)
    return epoch_stats(meters)


def unpack_batch(batch, fields: int, bad_samples) -> tuple:
    """A batch's `fields` entries. A trailing list of unreadable entries (collate_skipping_bad) goes to
    `bad_samples.record`; a batch of unreadable entries only gives empty fields."""
    if len(batch) in (1, fields + 1):
        *batch, bad = batch
        if bad_samples is not None:
            bad_samples.record(bad)
    if not batch:
        return tuple(torch.empty(0) for _ in range(fields))
    return tuple(batch)


def padded_forward(model: nn.Module, samples: torch.Tensor, pad_to: int | None) -> torch.Tensor:
    """model(samples), with a smaller batch first filled up to `pad_to` clips with copies of its last one and their
    outputs dropped: a model compiled with static shapes then sees one batch size, whatever the last batch holds."""
    if pad_to is None or len(samples) >= pad_to:
        return model(samples)
    filler = samples[-1:].expand(pad_to - len(samples), *samples.shape[1:])
    return model(torch.cat((samples, filler)))[:len(samples)]


@torch.no_grad()
def evaluate(data_loader: Iterable, model: nn.Module, device: torch.device, *, num_classes: int,
             precision: Precision = FLOAT32, bad_samples=None, pad_to: int | None = None) -> dict:
    """Validation: hard-label cross-entropy, acc@1/5 and UAR/WAR/F1 over every readable clip (gathered across
    ranks); unreadable ones (skip_bad) go to `bad_samples`. `model` is the plain module (or its compiled form,
    `training.evaluation_model`), not DDP's wrapper: its forward makes no collective, so a process whose batch was
    unreadable can skip it. `pad_to`: see `padded_forward`."""
    model.eval()
    records = []
    for batch in tqdm(data_loader, desc="validation", disable=not utils.is_main_process(), dynamic_ncols=True):
        samples, targets, ids = unpack_batch(batch, 3, bad_samples)
        if not len(samples):
            continue
        samples, targets = samples.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with precision.autocast(device):
            logits = padded_forward(model, samples, pad_to)
        logits = logits.float()
        losses = nn.functional.cross_entropy(logits, targets, reduction="none")
        ranked = logits.topk(min(5, num_classes), dim=1).indices
        for clip_id, label, loss, row in zip(ids, targets.tolist(), losses.tolist(), ranked.tolist()):
            records.append((clip_id, label, loss, row))
    if bad_samples is not None:  # every process checks the limit here, at the same point
        StepAgreement().before_forward(True, bad_samples)
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
def predict_views(data_loader: Iterable, model: nn.Module, device: torch.device, precision: Precision = FLOAT32,
                  pad_to: int | None = None) -> list[tuple[str, int, int, int, np.ndarray]]:
    """Softmax probabilities (float64) of every test view on this rank: (clip id, label, chunk, crop, probs).

    An item stands for its `num_crops` identical spatial views (`datasets.ClipDataset`): it is computed once and
    its probabilities are every one of those views' record. `pad_to`: see `padded_forward`."""
    model.eval()
    records = []
    for samples, targets, ids, chunks, num_crops in tqdm(data_loader, desc="test", dynamic_ncols=True,
                                                         disable=not utils.is_main_process()):
        with precision.autocast(device):
            logits = padded_forward(model, samples.to(device, non_blocking=True), pad_to)
        probs = torch.softmax(logits.double(), dim=1).cpu().numpy()
        for clip_id, label, chunk, crops, p in zip(ids, targets.tolist(), chunks.tolist(), num_crops.tolist(), probs):
            records += [(clip_id, label, chunk, crop, p) for crop in range(crops)]
    return records
