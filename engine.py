"""Fine-tuning step loops: one training epoch, validation, and the multi-view final test.

Every process of a multi-process run takes the same path through a step: before a forward they agree whether each
has clips and whether any met too many unreadable ones, after it whether every loss is finite (`StepAgreement`),
so no process ever waits in a collective that another one skipped.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from timm.utils import AverageMeter
from torch import nn
from tqdm import tqdm

import distributed
import preemption
import schedules
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
                          device=distributed.collective_device())
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


def apply_schedules(optimizer: torch.optim.Optimizer, global_step: int, schedule: schedules.Schedule | None) -> None:
    """The step's learning rate (times a group's lr_scale) and weight decay (groups that decay)."""
    if schedule is None:
        return
    for group in optimizer.param_groups:
        group["lr"] = float(schedule.lr[global_step]) * group.get("lr_scale", 1.0)
        if group["weight_decay"] > 0:
            group["weight_decay"] = float(schedule.weight_decay[global_step])


@dataclass(frozen=True)
class StepRecipe:
    """How a training step runs: precision and loss scaler, schedule, accumulation, clipping, EMA, mixup, device
    augmentation, and every how many optimizer steps the device's values are read (`StepLog`)."""

    precision: Precision = FLOAT32
    schedule: schedules.Schedule | None = None
    update_freq: int = 1
    max_norm: float | None = None
    model_ema: nn.Module | None = None
    mixup_fn: Callable | None = None
    augment: Callable | None = None  # augment_device.DeviceAugment (--augment_on device)
    log_every: int = 10


PLAIN_STEPS = StepRecipe()  # float32, no schedule, accumulation, clipping, EMA, mixup or device augmentation


@dataclass(frozen=True)
class EpochStart:
    """Where an epoch's step loop starts: the epoch, the optimizer steps of it already done (a run resumed part-way)
    with their meters, and the global step of the epoch's first step (for the schedules and TensorBoard)."""

    epoch: int = 0
    step: int = 0
    meters: dict[str, AverageMeter] | None = None
    global_step_offset: int = 0


FIRST_EPOCH = EpochStart()


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                   max_norm: float | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unscale, clip to max_norm (or only measure) the gradient norm, step. Returns the gradient norm and, under
    fp16, whether the scaler skipped the step (its gradients overflowed, it lowered its scale), both on the device.
    (GradScaler.step reads its overflow flag on the host unless the optimizer is fused: `training.create_optimizer`
    makes it fused under loss scaling.)"""
    if scaler is not None:
        scaler.unscale_(optimizer)
    parameters = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm if max_norm else float("inf")).detach()
    if scaler is None:
        optimizer.step()
        return grad_norm, None
    before = scaler._get_scale_async().clone()
    scaler.step(optimizer)
    scaler.update()
    return grad_norm, scaler._get_scale_async() < before


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, skipped: torch.Tensor | None) -> None:
    """timm's ModelEmaV3 step. Under fp16 the EMA follows applied steps only: a step the scaler skipped interpolates
    with weight 0, so that the average stays as it was without reading the flag on the host."""
    if skipped is None:
        ema.update(model)
        return
    weight = torch.where(skipped, 0.0, 1.0 - ema.get_decay())
    for ema_value, value in zip(ema.module.state_dict().values(), model.state_dict().values()):
        if ema_value.is_floating_point():
            ema_value.lerp_(value.to(ema_value.device), weight.to(ema_value.device))
        else:
            ema_value.copy_(value)


def poisoned(loss: torch.Tensor) -> torch.Tensor:
    """The loss times exactly 1, or NaN where it is not finite: its backward then leaves every gradient non-finite,
    so the fp16 scaler skips the step on every process (DDP averages the NaN in) without a host read."""
    return loss * torch.where(torch.isfinite(loss), 1.0, float("nan"))


def all_reduce_gradients(model: nn.Module) -> None:
    """Average the accumulated gradients over the processes, as DDP's all-reduce does: for an optimizer step whose
    every synchronised micro-batch was skipped (no process-wide clips), so that no process applies its own."""
    world = torch.distributed.get_world_size()
    for parameter in model.parameters():
        if parameter.grad is not None:
            torch.distributed.all_reduce(parameter.grad.div_(world))


_HOST_GROUP: tuple = (None, None)  # (the default group, its gloo twin)


def host_group():
    """A gloo group of every process, for collectives of host values: its all-reduce neither waits for nor occupies
    a device. None with one process; made once per default group (a collective: every process calls it)."""
    global _HOST_GROUP
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return None
    world = torch.distributed.group.WORLD
    if _HOST_GROUP[0] is not world:
        _HOST_GROUP = (world, torch.distributed.new_group(backend="gloo"))
    return _HOST_GROUP[1]


class StepAgreement:
    """What the processes of a run agree on before each micro-batch, so that all take the same path.

    `before_forward`: does every process have clips, did any meet more unreadable ones than allowed (then all raise,
    listing everyone's), and is any further flag of the caller's (e.g. a stop request) set on some process? Host
    values, any-reduced in one all-reduce on a CPU group (`host_group`): no process waits for its device, and a
    one-process run makes no collective at all.
    """

    def __init__(self):
        self.group = host_group()

    def any(self, **flags: bool) -> dict[str, bool]:
        """Each flag: set on some process."""
        if self.group is None:
            return flags
        values = torch.tensor([int(v) for v in flags.values()], dtype=torch.int32)
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return {name: bool(v) for name, v in zip(flags, values.tolist())}

    def before_forward(self, has_data: bool, bad_samples, **flags: bool) -> dict[str, bool]:
        """"train": every process has clips for this micro-batch (else all skip it); then each of `flags`."""
        exceeded = bad_samples is not None and bad_samples.exceeded
        agreed = self.any(missing=not has_data, exceeded=exceeded, **flags)
        if agreed.pop("exceeded"):
            if self.group is None:
                bad_samples.check()
            else:
                bad_samples.check({k: v for rank_seen in distributed.all_gather_objects(bad_samples.seen)
                                   for k, v in rank_seen.items()})
        return {"train": not agreed.pop("missing"), **agreed}

    def first(self, found: tuple[int, int, float] | None) -> tuple[int, int, float, int] | None:
        """The earliest of every process's `found` (step, global step, value) and its rank, or None."""
        if self.group is None:
            return None if found is None else (*found, 0)
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, found, group=self.group)
        hits = [(*f, rank) for rank, f in enumerate(gathered) if f is not None]
        return min(hits) if hits else None


class StepLog:
    """Each step's loss, loss scale and gradient norm, kept on the device and read in one host read every
    `every` optimizer steps (`flush`), then given in order to `replay` (the meters, the progress bar, TensorBoard).

    With `stop_on_non_finite`, a flush that finds a non-finite loss on any process raises NonFiniteLossError on
    every process, naming the step where it first appeared (all processes flush after the same steps).
    """

    def __init__(self, replay: Callable[[dict], None], *, epoch: int, every: int, agreement: StepAgreement,
                 stop_on_non_finite: bool):
        self.replay, self.epoch, self.every, self.agreement = replay, epoch, max(every, 1), agreement
        self.stop_on_non_finite = stop_on_non_finite
        self.records: list[dict] = []
        self.steps = 0

    def add(self, record: dict) -> None:
        """A (micro-)step's values: host numbers, and tensors on the device to be read at the next flush."""
        self.records.append(record)

    def end_of_step(self, *, flush_now: bool = False) -> None:
        """An optimizer step ended: flush every `every` steps (or now, e.g. before a checkpoint)."""
        self.steps += 1
        if flush_now or self.steps % self.every == 0:
            self.flush()

    def flush(self) -> None:
        records, self.records = read_device_values(self.records), []
        if self.stop_on_non_finite:
            found = next(((r["step"], r["global_step"], r["loss"]) for r in records
                          if r.get("loss") is not None and not math.isfinite(r["loss"])), None)
            first = self.agreement.first(found)
            if first is not None:
                step, global_step, value, rank = first
                raise NonFiniteLossError(non_finite_message(value, rank, self.epoch, step, global_step))
        for record in records:
            self.replay(record)


def read_device_values(records: list[dict]) -> list[dict]:
    """The records with their tensors replaced by Python floats: one host read for all of them."""
    keys = [(i, k) for i, record in enumerate(records) for k, v in record.items() if isinstance(v, torch.Tensor)]
    if not keys:
        return records
    values = torch.stack([records[i][k].detach().reshape(()).double() for i, k in keys]).tolist()
    records = [dict(record) for record in records]
    for (i, k), value in zip(keys, values):
        records[i][k] = value
    return records


def schedule_values(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The step's learning rates (largest and smallest over the groups) and weight decay."""
    lrs = [g["lr"] for g in optimizer.param_groups]
    return {"lr": max(lrs), "min_lr": min(lrs), "weight_decay": max(g["weight_decay"] for g in optimizer.param_groups)}


def scale_of(scaler: torch.amp.GradScaler | None) -> torch.Tensor | float:
    """The loss scale, on the device (1.0 without loss scaling)."""
    return 1.0 if scaler is None else scaler._get_scale_async().clone()


def sync_buffers(model: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics), which DDP only does at the start of a forward:
    after an epoch all processes then evaluate and test the model the checkpoint holds."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, 0)


def non_finite_message(value: float, rank: int, epoch: int, step: int, global_step: int) -> str:
    where = f" on process {rank}" if torch.distributed.is_initialized() else ""
    return f"loss is {value}{where} at epoch {epoch}, step {step} (global step {global_step})"


@dataclass
class Batch:
    """A training batch as the step uses it: its tensors on the device (the augmentation's records stay on the
    host), the clip count known on the host, and its unreadable entries."""

    samples: torch.Tensor
    targets: torch.Tensor
    params: dict | None
    bad: list

    def __len__(self) -> int:
        return len(self.targets)


def to_device(batch, device: torch.device, fields: int) -> Batch:
    """A loader batch (`fields` tensors, maybe a trailing list of unreadable entries) with its clips and targets sent
    to the device (non-blocking: from pinned memory the copy does not wait)."""
    bad = batch[-1] if len(batch) in (1, fields + 1) else []
    if len(batch) in (0, 1):
        return Batch(torch.empty(0), torch.empty(0), None, bad)
    samples, targets = batch[0].to(device, non_blocking=True), batch[fields - 1].to(device, non_blocking=True)
    return Batch(samples, targets, batch[1] if fields == 3 else None, bad)


def prefetched(batches: Iterable, prepare: Callable, device: torch.device) -> Iterator:
    """`prepare(batch)` of each batch. On CUDA the next batch is prepared (its host work, and its copies on a side
    stream) before the current one is given: its host-to-device copy overlaps the current step."""
    if device.type != "cuda":
        yield from map(prepare, batches)
        return
    stream, current = torch.cuda.Stream(device), torch.cuda.current_stream(device)
    pending = None
    for batch in batches:
        with torch.cuda.stream(stream):
            prepared = prepare(batch)
            ready = stream.record_event()
        if pending is not None:
            yield _arrived(*pending, current)
        pending = prepared, ready
    if pending is not None:
        yield _arrived(*pending, current)


def _arrived(prepared, ready: torch.cuda.Event, current: torch.cuda.Stream):
    """The prepared batch, once its copies are done (the compute stream waits, not the host)."""
    current.wait_event(ready)
    for value in vars(prepared).values():
        if isinstance(value, torch.Tensor) and value.is_cuda:
            value.record_stream(current)  # its memory is not reused while the compute stream still reads it
    return prepared


def forward_backward(model: nn.Module, batch: Batch, criterion: Callable, recipe: StepRecipe, *,
                     sync: bool) -> torch.Tensor:
    """Augment (on the device), mix, forward, loss and backward (scaled under fp16, divided by update_freq; DDP's
    all-reduce only with `sync`). Returns the loss, on the device."""
    samples, targets = batch.samples, batch.targets
    if recipe.augment is not None:
        samples = recipe.augment(samples, batch.params)
    if recipe.mixup_fn is not None:
        if len(samples) % 2:  # timm's batch mixup pairs clips: drop one after a skipped one
            samples, targets = samples[:-1], targets[:-1]
        # timm's Mixup cuts one box per batch out of (B, C, H, W): viewing the clip's channels and frames as one axis
        # applies the same box to every frame, as the video mixup of the original.
        mixed, targets = recipe.mixup_fn(samples.flatten(1, 2), targets)
        samples = mixed.view_as(samples)
    scaler = recipe.precision.scaler
    with contextlib.nullcontext() if sync or not hasattr(model, "no_sync") else model.no_sync():
        with recipe.precision.autocast(samples.device):
            loss = criterion(model(samples), targets)
        scaled = loss / recipe.update_freq
        (scaler.scale(poisoned(scaled)) if scaler is not None else scaled).backward()
    return loss.detach()


def finish_step(model: nn.Module, optimizer: torch.optim.Optimizer, recipe: StepRecipe, *, trained: bool,
                synced: bool) -> dict:
    """The optimizer step that ends an accumulation (none if no micro-batch trained): gradients averaged over the
    processes if no synchronised backward did it, unscale, clip, step, EMA. Returns the step's record fields."""
    if not trained:
        return {"trained": False}
    if not synced and torch.distributed.is_initialized() and hasattr(model, "no_sync"):
        all_reduce_gradients(model)
    scaler = recipe.precision.scaler
    grad_norm, skipped = optimizer_step(model, optimizer, scaler, recipe.max_norm)
    if recipe.model_ema is not None:
        update_ema(recipe.model_ema, model, skipped)
    return {"trained": True, "grad_norm": grad_norm, "skipped": 0.0 if skipped is None else skipped}


def train_one_epoch(model: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, criterion: Callable, recipe: StepRecipe = PLAIN_STEPS,
                    start: EpochStart = FIRST_EPOCH, log_writer=None, on_step: Callable | None = None,
                    bad_samples=None) -> dict[str, float]:
    """One epoch of (mixup) training with per-step LR / weight-decay schedules and gradient accumulation.

    With `recipe.augment` (`--augment_on device`) the loader gives uint8 clips and their drawn augmentation parameters,
    augmented here, on the device, before mixup. `start` says where the epoch begins: resumed part-way, the loader
    yields what is left of it after `start.step` optimizer steps and `start.meters` holds their averages.
    `on_step(step, meters)` runs after an optimizer step (e.g. a checkpoint): after every one, or, if it has a
    `due(step)` method, after those it is due. Unreadable entries of a batch go to `bad_samples`. Under fp16 loss
    scaling a step with a non-finite loss or gradient is skipped and counted (skipped_steps), as GradScaler does;
    otherwise a non-finite loss raises NonFiniteLossError within `recipe.log_every` steps, before any `on_step`.
    Gradients are all-reduced once per optimizer step. Returns the epoch averages over every process. When a process
    received a stop signal, every process raises preemption.StopRequested at the same step boundary.
    """
    model.train()
    meters = start.meters or new_meters()
    update_freq, agreement = recipe.update_freq, StepAgreement()
    log = StepLog(lambda record: replay_finetune(meters, record, progress, log_writer), epoch=start.epoch,
                  every=recipe.log_every, agreement=agreement, stop_on_non_finite=recipe.precision.scaler is None)
    done = start.step * update_freq  # micro-batches of the epoch already trained
    progress = tqdm(data_loader, desc=f"epoch {start.epoch}", disable=not distributed.is_main_process(),
                    dynamic_ncols=True, initial=done, total=done + len(data_loader))
    steps_per_epoch = recipe.schedule.steps_per_epoch if recipe.schedule is not None else None
    fields = 2 if recipe.augment is None else 3
    optimizer.zero_grad()
    trained = synced = False  # in this optimizer step: a micro-batch trained; a backward all-reduced the gradients
    batches = prefetched(progress, lambda batch: to_device(batch, device, fields), device)
    for micro_step, batch in enumerate(batches, done):
        if bad_samples is not None:
            bad_samples.record(batch.bad)
        step = micro_step // update_freq
        if steps_per_epoch is not None and step >= steps_per_epoch:
            continue
        global_step, last = start.global_step_offset + step, (micro_step + 1) % update_freq == 0
        if micro_step % update_freq == 0:
            apply_schedules(optimizer, global_step, recipe.schedule)
        record = {"step": step, "global_step": global_step, "last": last, "loss": None, **schedule_values(optimizer)}
        clips = len(batch) - (len(batch) % 2 if recipe.mixup_fn is not None else 0)  # mixup pairs them
        agreed = agreement.before_forward(clips > 0, bad_samples, stop=preemption.requested())
        if agreed["stop"] and micro_step % update_freq == 0:  # every process stops before this optimizer step
            log.flush()
            raise preemption.StopRequested(step, meters)
        if agreed["train"]:
            sync = last or not hasattr(model, "no_sync")
            record["loss"] = forward_backward(model, batch, criterion, recipe, sync=sync)
            trained, synced = True, synced or sync
        if last:
            record.update(finish_step(model, optimizer, recipe, trained=trained, synced=synced))
            optimizer.zero_grad()
            trained = synced = False
        record["scale"] = scale_of(recipe.precision.scaler) if record["loss"] is not None else None
        log.add(record)
        if last:
            due = on_step is not None and getattr(on_step, "due", lambda _: True)(step + 1)
            log.end_of_step(flush_now=due)
            if due:
                on_step(step + 1, meters)
    log.flush()
    sync_buffers(model)
    return epoch_stats(meters)


def replay_finetune(meters: dict[str, AverageMeter], record: dict, progress, log_writer) -> None:
    """A read micro-step into the meters (its optimizer step's outcome first), the progress bar and TensorBoard."""
    if record["last"]:
        if record["trained"] and not record["skipped"]:
            meters["grad_norm"].update(record["grad_norm"])
        else:
            meters["skipped_steps"].update(1)
    loss = record["loss"]
    if loss is None or not math.isfinite(loss):
        return
    for name, key in (("loss", "loss"), ("loss_scale", "scale"), ("lr", "lr"), ("min_lr", "min_lr"),
                      ("weight_decay", "weight_decay")):
        meters[name].update(record[key])
    progress.set_postfix(loss=f"{loss:.4f}", lr=f"{record['lr']:.2e}")
    if log_writer is not None:
        for name, value in (("loss/loss", loss), ("opt/lr", record["lr"]), ("opt/min_lr", record["min_lr"]),
                            ("opt/loss_scale", meters["loss_scale"].val),
                            ("opt/weight_decay", meters["weight_decay"].val),
                            ("opt/grad_norm", meters["grad_norm"].val)):
            log_writer.add_scalar(name, value, record["global_step"])


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
    for batch in tqdm(data_loader, desc="validation", disable=not distributed.is_main_process(), dynamic_ncols=True):
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
    for rank_records in distributed.all_gather_objects(records):
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
                                                         disable=not distributed.is_main_process()):
        with precision.autocast(device):
            logits = padded_forward(model, samples.to(device, non_blocking=True), pad_to)
        probs = torch.softmax(logits.double(), dim=1).cpu().numpy()
        for clip_id, label, chunk, crops, p in zip(ids, targets.tolist(), chunks.tolist(), num_crops.tolist(), probs):
            records += [(clip_id, label, chunk, crop, p) for crop in range(crops)]
    return records
