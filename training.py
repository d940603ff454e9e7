"""The training skeleton both entry scripts share: run preparation, optimizer, resume, checkpoints and the log.

`run_class_finetuning.py` and `run_mae_pretraining.py` read top to bottom as: prepare the run, build data and
model, `create_optimizer`, `resume`, then loop over epochs calling their engine and a `Checkpointer`. What differs
between them on purpose (docs/ARCHITECTURE.md, "Fine-tuning and pretraining") stays in the scripts.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tensorboardX import SummaryWriter
from timm.optim import create_optimizer_v2
from timm.utils import AverageMeter
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import checkpoint
import distributed
import engine
import schedules
import utils
from ca_module import never_used_parameters
from data_check import DataCheckError, check_lists
from datasets import BadSampleLog
from rng import gather_rng_states, set_rng_state

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """What a run's set-up decided: this process (rank, world size, device), the precision and the output folder."""

    process: distributed.Process
    amp: str
    output_dir: Path

    @property
    def device(self) -> torch.device:
        return self.process.device

    @property
    def is_main(self) -> bool:
        return self.process.rank == 0

    def precision(self) -> engine.Precision:
        """The autocast dtype and, for fp16, a fresh loss scaler."""
        return engine.Precision(self.amp, torch.amp.GradScaler(self.device.type) if self.amp == "fp16" else None)


def prepare_run(args: argparse.Namespace, *, lists: Sequence[str | Path], nb_classes: int | None,
                data_set: str | None = None, evaluating: bool = False,
                make_demo_data: Callable[[], None] | None = None) -> Run:
    """Join torchrun's process group, set up logging (rank 0 speaks), precision and seeds; with --demo, make the demo
    data (rank 0, the others wait); refuse to overwrite a previous run; then the fast check of the data lists (a bad
    list stops the run now, naming file and line)."""
    utils.keep_freed_memory()
    process = distributed.init_distributed(args.device, args.dist_timeout, args.local_rank)
    logging.basicConfig(level=logging.INFO if process.rank == 0 else logging.WARNING, format="%(message)s")
    amp = args.amp or utils.default_amp(process.device)
    if process.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed clip shapes: the fastest convolution kernels are found once
        if amp == "none":  # float32 runs use the TF32 tensor cores
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    seed = args.seed + process.rank
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    if args.demo and make_demo_data is not None and process.rank == 0:
        make_demo_data()
    if process.distributed:
        torch.distributed.barrier()
    output_dir = Path(args.output_dir or ".")
    checkpoint.check_output_dir(output_dir, evaluating=evaluating, resuming=args.auto_resume or bool(args.resume))
    output_dir.mkdir(parents=True, exist_ok=True)
    check_data(lists, nb_classes, args.data_root, data_set=data_set)
    return Run(process, amp, output_dir)


def check_data(lists: Sequence[str | Path], nb_classes: int | None, data_root: str | None,
               data_set: str | None = None) -> None:
    """The fast data check (data_check.py) of the lists a run reads: a bad list stops it now, with file and line;
    its warnings (e.g. data other than the released checkpoints were trained on) are logged."""
    try:
        report = check_lists(list(lists), nb_classes, data_root, data_set=data_set)
    except DataCheckError as err:
        raise SystemExit(str(err)) from None
    for warning in report.warnings:
        logger.warning("data check: %s", warning)


@contextmanager
def process_group_closed() -> Iterator[None]:
    """Around an entry script's main: the process group is destroyed at the end and on error, so a failing rank
    exits at once (torchrun then stops the others) instead of leaving its peers to the watchdog."""
    try:
        yield
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def steps_per_epoch(num_items: int, global_batch: int, what: str) -> int:
    """Optimizer steps in an epoch (the last partial global batch is dropped); none is an error naming `what`."""
    steps = num_items // global_batch
    if steps == 0:
        raise ValueError(f"{what} has {num_items} clips, fewer than one global batch ({global_batch} = batch_size x "
                         f"update_freq x processes)")
    return steps


FUSED_OPTIMIZERS = ("adam", "adamw", "sgd", "nesterov", "momentum")  # timm's names of torch's fused optimizers


def create_optimizer(args: argparse.Namespace, model: nn.Module, lr: float, layer_decay: float | None = None, *,
                     loss_scaling: bool = False) -> torch.optim.Optimizer:
    """timm's optimizer from the original flags: no weight decay for 1-D parameters, biases and the names in
    model.no_weight_decay() (matched exactly), and with `layer_decay` timm's per-layer learning-rate scales.

    Under fp16 loss scaling it is torch's fused implementation where there is one (AdamW, Adam, SGD): GradScaler then
    hands it the overflow flag on the device, and an overflowed step is skipped there, instead of the flag being read
    on the host at every step. Its arithmetic is AdamW's / SGD's, its rounding may differ in the last bits."""
    fused = {"fused": True} if loss_scaling and args.opt.lower() in FUSED_OPTIMIZERS else {}
    return create_optimizer_v2(model, opt=args.opt, lr=lr, weight_decay=args.weight_decay, momentum=args.momentum,
                               eps=args.opt_eps, layer_decay=layer_decay,
                               **({"betas": tuple(args.opt_betas)} if args.opt_betas else {}), **fused)


def checkpoint_args(args: argparse.Namespace, run: Run, global_batch: int, **derived) -> argparse.Namespace:
    """The arguments stored in checkpoints: as parsed, with the values the run derived from them, as the originals
    stored them (scaled learning rates, process geometry, precision, ...). `args` itself is left as parsed."""
    scaled = {name: schedules.scale_lr(getattr(args, name), global_batch) for name in ("lr", "min_lr", "warmup_lr")}
    return argparse.Namespace(**{**vars(args), **scaled, "rank": run.process.rank,
                                 "world_size": run.process.world_size, "distributed": run.process.distributed,
                                 "gpu": run.device.index or 0, "device": str(run.device), "amp": run.amp,
                                 "output_dir": str(run.output_dir), **derived})


@dataclass
class ResumeState:
    """Where a run continues from and what it carries over: loaded by `resume`, written back by `Checkpointer`."""

    checkpoint: str | None = None  # the file resumed from
    start_epoch: int = 0
    start_step: int = 0  # optimizer steps already done in start_epoch
    meters: dict[str, AverageMeter] | None = None  # the unfinished epoch's averages (start_step > 0)
    bad_samples: BadSampleLog = field(default_factory=lambda: BadSampleLog(10))
    best_metric: float = -float("inf")

    def epoch_start(self, epoch: int, steps_per_epoch: int) -> engine.EpochStart:
        """Where `epoch`'s step loop starts: part-way with the saved meters if it is the epoch resumed mid-way."""
        resumed = epoch == self.start_epoch and self.start_step > 0
        return engine.EpochStart(epoch, self.start_step if resumed else 0, self.meters if resumed else None,
                                 global_step_offset=epoch * steps_per_epoch)

    def extra(self, meters: dict[str, AverageMeter] | None = None) -> dict:
        """What a checkpoint needs beyond the model and optimizer to continue bit-exactly (a collective)."""
        gathered = distributed.all_gather_objects(self.bad_samples.seen)
        seen = {k: v for rank_seen in gathered for k, v in rank_seen.items()}
        return {"rng": gather_rng_states(), "best_metric": self.best_metric, "bad_samples": seen,
                "train_meters": engine.meters_state(meters) if meters else None,
                "processes": distributed.get_world_size()}


def resume(args: argparse.Namespace, run: Run, model: nn.Module, *, optimizer: torch.optim.Optimizer | None = None,
           precision: engine.Precision | None = None, model_ema: nn.Module | None = None, evaluating: bool = False,
           max_bad_samples: int = 10, geometry: dict[str, int] | None = None) -> ResumeState:
    """Load --resume (or, with --auto_resume, the newest complete checkpoint in the output folder): weights, then for
    training the optimizer / scaler / EMA states, the position, the unfinished epoch's averages, the unreadable clips
    met and every RNG. `geometry` (batch size, accumulation, processes) must match to continue an epoch part-way."""
    restored = checkpoint.restore(model, args.resume, run.output_dir, args.auto_resume, optimizer=optimizer,
                                  scaler=precision.scaler if precision else None, model_ema=model_ema,
                                  evaluating=evaluating)
    if restored is None:
        return ResumeState(start_epoch=args.start_epoch, bad_samples=BadSampleLog(max_bad_samples))
    saved = restored.checkpoint
    start_epoch = args.start_epoch if restored.start_epoch is None else restored.start_epoch
    if restored.start_step and geometry:
        before_args = saved.get("args")
        before = {name: getattr(before_args, name, 1) for name in geometry}
        if "processes" in geometry:
            before["processes"] = saved.get("processes", getattr(before_args, "world_size", 1))
        if before != geometry:
            raise checkpoint.CheckpointError(
                f"{restored.path} stopped mid-epoch with {before}: resume it with the same, not {geometry}")
    rng = [] if evaluating else saved.get("rng") or []
    if len(rng) == distributed.get_world_size():
        set_rng_state(rng[distributed.get_rank()])
    elif rng:
        logger.warning("the checkpoint's RNG states are of %d processes, this run has %d: continuing with fresh "
                       "seeds (not bit-exact)", len(rng), distributed.get_world_size())
    return ResumeState(checkpoint=restored.path, start_epoch=start_epoch, start_step=restored.start_step,
                       meters=engine.new_meters(saved.get("train_meters")) if restored.start_step else None,
                       bad_samples=BadSampleLog(max_bad_samples, saved.get("bad_samples")),
                       best_metric=saved.get("best_metric", -float("inf")))


@dataclass
class Checkpointer:
    """Writes the run's checkpoints: checkpoint-last.pth every epoch (and every `save_every_steps` optimizer steps),
    checkpoint-<epoch>.pth every `save_ckpt_freq` epochs and after the last, checkpoint-best.pth on request. Every
    process calls it (it gathers RNG states); rank 0 writes."""

    run: Run
    state: ResumeState
    model: nn.Module  # the plain module, not DDP's wrapper
    optimizer: torch.optim.Optimizer
    args: argparse.Namespace  # as stored (checkpoint_args)
    precision: engine.Precision
    epochs: int
    save_ckpt_freq: int
    save_every_steps: int = 0
    keep_last: int = 0
    model_ema: nn.Module | None = None
    enabled: bool = True

    def save(self, epoch: int | str, *, step: int | None = None, meters: dict[str, AverageMeter] | None = None,
             numbered: bool = False) -> None:
        if not self.enabled:
            return
        extra = self.state.extra(meters) if epoch != "best" else None
        checkpoint.save_model(self.run.output_dir, epoch, model=self.model, optimizer=self.optimizer,
                              args=self.args, scaler=self.precision.scaler, model_ema=self.model_ema, step=step,
                              extra=extra, numbered=numbered, keep_last=self.keep_last)

    def end_of_epoch(self, epoch: int) -> None:
        """checkpoint-last.pth, and checkpoint-<epoch>.pth as the originals numbered them."""
        self.save(epoch, numbered=(epoch + 1) % self.save_ckpt_freq == 0 or epoch + 1 == self.epochs)

    def mid_epoch(self, epoch: int, steps_per_epoch: int) -> Callable[[int, dict[str, AverageMeter]], None]:
        """The engine's on_step: checkpoint-last.pth every `save_every_steps` global steps inside the epoch. Its
        `due(step)` names those steps, before which the engine reads the device's values into the meters."""
        def due(step: int) -> bool:
            return self.save_every_steps > 0 and step < steps_per_epoch and \
                (epoch * steps_per_epoch + step) % self.save_every_steps == 0

        def on_step(step: int, meters: dict[str, AverageMeter]) -> None:
            if due(step):
                self.save(epoch, step=step, meters=meters)
        on_step.due = due
        return on_step


def distributed_model(model: nn.Module, run: Run, *, compile: bool = False, sync_bn: bool = False) -> nn.Module:
    """The model the training step calls: DDP's wrapper in a multi-process run, then torch.compile (so the gradient
    all-reduce overlaps the compiled backward). Parameters no forward reaches (ca_module.never_used_parameters)
    stop requiring gradients, so DDP needs no search for unused ones; they stay in the optimizer and checkpoints.
    `sync_bn`: the BatchNorms (the CA branch's) normalise with the statistics of the global batch, not the
    process's (same parameters and checkpoint keys; CUDA only)."""
    for parameter in never_used_parameters(model):
        parameter.requires_grad_(False)
    if sync_bn and run.process.distributed:
        if run.device.type != "cuda":
            raise ValueError("--sync_bn needs CUDA: torch's SyncBatchNorm does not run on the CPU")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if run.process.distributed:
        model = DistributedDataParallel(model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    return torch.compile(model) if compile else model


def evaluation_model(model: nn.Module, *, compile: bool = False) -> nn.Module:
    """The model validation and test call: the plain module (no DDP: its forward makes no collective), with --compile
    compiled for static shapes. The engine pads a last partial batch to its loader's batch size
    (`engine.padded_forward`), so one graph serves all of a loader's batches (one for validation, one for the
    test): nothing recompiles (benchmarks/bench_compile.py measures this against a dynamic batch dimension)."""
    return torch.compile(model, dynamic=False) if compile else model


@contextmanager
def naming_last_checkpoint(output_dir: str | Path) -> Iterator[None]:
    """A non-finite loss stops the run with the newest checkpoint to go back to in its message."""
    try:
        yield
    except engine.NonFiniteLossError as err:
        last = checkpoint.latest_checkpoint(output_dir)
        raise engine.NonFiniteLossError(f"{err}; last good checkpoint: {last or 'none written yet'}") from None


def log_writer(args: argparse.Namespace, run: Run) -> SummaryWriter | None:
    """TensorBoard events in --log_dir (default: the output folder), written by rank 0."""
    return SummaryWriter(args.log_dir or str(run.output_dir)) if run.is_main else None


def write_log(run: Run, stats: dict) -> None:
    """One JSON line in <output_dir>/log.txt (rank 0)."""
    if run.is_main:
        with open(run.output_dir / "log.txt", "a") as f:
            f.write(json.dumps(stats) + "\n")
