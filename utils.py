"""Helpers the entry scripts share: distributed set-up, RNG states and the resumable sampler, schedules, CLI groups.

Checkpoints live in checkpoint.py, the training skeleton that uses these in training.py.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import itertools
import logging
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

logger = logging.getLogger(__name__)

def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS.

    By default glibc serves blocks above a few MB with mmap and unmaps them on free, so every large activation
    of a forward/backward pass is page-faulted in afresh: on CPU this costs up to ~30% of a training step. With
    mmap off and a high trim threshold, freed blocks are reused. Call once at process start; returns False
    where it does not apply (not glibc).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


# --------------------------------------------------------------------------------------------------------------
# Distributed helpers (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain `python` run is one process)

@dataclass(frozen=True)
class Process:
    """Where this process runs: its rank among `world_size` (torchrun's RANK / WORLD_SIZE) and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def find_local_rank(flag: int = -1) -> int:
    """This process's GPU on its node: LOCAL_RANK (torchrun and torch.distributed.launch set it), else the
    --local_rank / --local-rank flag (torch.distributed.launch without --use-env), else 0."""
    return int(os.environ.get("LOCAL_RANK", max(flag, 0)))


def init_distributed(device: str, timeout_minutes: float = 30.0, local_rank: int = -1) -> Process:
    """Join torchrun's process group when launched by it (NCCL on CUDA, gloo on the CPU); else one process.

    `--device cuda` means this rank's GPU: LOCAL_RANK (torchrun sets it), else `local_rank` (torch.distributed.launch's
    --local-rank); `cuda:N` is taken as given.
    """
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    target = torch.device(device)
    if target.type == "cuda":
        target = torch.device("cuda", target.index if target.index is not None else find_local_rank(local_rank))
        torch.cuda.set_device(target)
    if world_size > 1:
        torch.distributed.init_process_group(backend="nccl" if target.type == "cuda" else "gloo",
                                             timeout=timedelta(minutes=timeout_minutes),
                                             device_id=target if target.type == "cuda" else None)
        torch.distributed.barrier()
    return Process(rank, world_size, target)


def collective_device() -> torch.device:
    """Where the tensors of this process's collectives go: its current GPU when the process group's backend has no
    CPU side (NCCL), else the CPU (gloo, or a mixed cpu:gloo,cuda:nccl group)."""
    if torch.distributed.is_initialized():
        backend = str(torch.distributed.get_backend())
        if "cpu" not in backend and "gloo" not in backend and "mpi" not in backend:
            return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def get_rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def get_world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def all_gather_objects(obj):
    """Every rank's `obj`, in rank order (a one-element list without distributed)."""
    if not torch.distributed.is_initialized():
        return [obj]
    gathered = [None] * get_world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def cosine_scheduler(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                     warmup_epochs: int = 0, start_warmup_value: float = 0.0, warmup_steps: int = -1):
    """Per-step values: linear warm-up from start_warmup_value, then half a cosine from base to final value."""
    warmup_iters = warmup_steps if warmup_steps > 0 else warmup_epochs * niter_per_ep
    total = epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    iters = np.arange(max(total - warmup_iters, 0))
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / max(len(iters), 1)))
    # A run shorter than its warm-up ends part-way up the warm-up ramp.
    schedule = np.concatenate((warmup, cosine))[:total]
    return schedule


# --------------------------------------------------------------------------------------------------------------
# Resuming bit-exactly: every RNG a training step draws from, and a sampler that can start an epoch part-way

def rng_state() -> dict:
    """This process's torch (CPU and its current GPU), numpy and Python RNG states, in a form `load_checkpoint`
    accepts."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's own GPU only: resumable on another GPU count
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if isinstance(state.get("cuda"), torch.Tensor) and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng_states() -> list[dict]:
    """Every rank's `rng_state()`, in rank order (a collective: call it on all ranks)."""
    return all_gather_objects(rng_state())


@contextmanager
def seeded_rngs(seed: int | tuple[int, ...]):
    """Run a block with torch (CPU), numpy and `random` seeded from `seed` (e.g. (seed, epoch, index)), then put
    the caller's states back.

    A sample drawn inside depends on `seed` only: not on the worker that loads it, nor on what came before. The
    three streams are independent: each is seeded from its own child of numpy's SeedSequence (torch and numpy
    seeded with one integer run the same MT19937 stream, so their draws would be the same raw numbers).
    """
    torch_seq, numpy_seq, python_seq = np.random.SeedSequence(seed).spawn(3)
    saved = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    torch.default_generator.manual_seed(int(torch_seq.generate_state(1, np.uint64)[0]))
    np.random.seed(numpy_seq.generate_state(4))
    random.seed(int.from_bytes(python_seq.generate_state(4).tobytes(), "little"))
    try:
        yield
    finally:
        torch.set_rng_state(saved["torch"])
        np.random.set_state(saved["numpy"])
        random.setstate(saved["python"])


class ResumableSampler(torch.utils.data.DistributedSampler):
    """A DistributedSampler whose epoch can start part-way: `set_epoch(epoch, start=k)` skips this rank's first k
    indices of that epoch's order (which depends on seed and epoch only), so a resumed epoch sees what is left."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


# --------------------------------------------------------------------------------------------------------------
# Entry-script pieces shared by run_class_finetuning.py and run_mae_pretraining.py (the originals' flags)

def add_lg_arguments(parser: argparse.ArgumentParser) -> None:
    """The LGI-Former block options (--lg_*), as both original scripts define them."""
    add = parser.add_argument
    add("--lg_region_size", type=int, nargs="+", default=(2, 2, 10))
    add("--lg_first_attn_type", type=str, default="self", choices=["cross", "self"])
    add("--lg_third_attn_type", type=str, default="cross", choices=["cross", "self"])
    add("--lg_attn_param_sharing_first_third", action="store_true")
    add("--lg_attn_param_sharing_all", action="store_true")
    add("--lg_no_second", action="store_true")
    add("--lg_no_third", action="store_true")


def lg_kwargs(args: argparse.Namespace) -> dict:
    """The --attn_type / --lg_* flags as model keyword arguments."""
    return dict(attn_type=args.attn_type, lg_region_size=args.lg_region_size,
                lg_first_attn_type=args.lg_first_attn_type, lg_third_attn_type=args.lg_third_attn_type,
                lg_attn_param_sharing_first_third=args.lg_attn_param_sharing_first_third,
                lg_attn_param_sharing_all=args.lg_attn_param_sharing_all, lg_no_second=args.lg_no_second,
                lg_no_third=args.lg_no_third)


def add_optimizer_arguments(parser: argparse.ArgumentParser, lr: float, min_lr: float, warmup_epochs: int) -> None:
    """Optimizer and schedule flags; the defaults that differ between the scripts are passed in."""
    add = parser.add_argument
    add("--opt", default="adamw", type=str)
    add("--opt_eps", default=1e-8, type=float)
    add("--opt_betas", default=None, type=float, nargs="+")
    add("--clip_grad", type=float, default=None)
    add("--momentum", type=float, default=0.9)
    add("--weight_decay", type=float, default=0.05)
    add("--weight_decay_end", type=float, default=None)
    add("--lr", type=float, default=lr, help="learning rate per 256 clips of global batch")
    add("--warmup_lr", type=float, default=1e-6, help="parsed as in the original; warm-up starts at 0")
    add("--min_lr", type=float, default=min_lr)
    add("--warmup_epochs", type=int, default=warmup_epochs)
    add("--warmup_steps", type=int, default=-1)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Device, precision, seed, resume, checkpoint and process flags."""
    add = parser.add_argument
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--amp", default=None, choices=["none", "fp16", "bf16"], help="default: bf16 on CUDA if supported, else none")
    add("--compile", action="store_true", help="torch.compile the model")
    add("--seed", default=0, type=int)
    add("--resume", default="")
    add("--auto_resume", action="store_true")
    add("--no_auto_resume", action="store_false", dest="auto_resume")
    parser.set_defaults(auto_resume=True)
    add("--start_epoch", default=0, type=int)
    add("--save_every_steps", default=0, type=int,
        help="also write checkpoint-last.pth every N optimizer steps, to resume mid-epoch (ours; 0: at epoch ends)")
    add("--log_every", default=10, type=int,
        help="read the loss, gradient norm and loss scale from the device every N optimizer steps (ours; the meters "
             "and TensorBoard still get every step's values)")
    add("--keep_last_ckpts", default=0, type=int, help="keep only the newest N checkpoint-<epoch>.pth (ours; 0: all)")
    add("--num_workers", default=10, type=int)
    add("--pin_mem", action="store_true")
    add("--no_pin_mem", action="store_false", dest="pin_mem")
    parser.set_defaults(pin_mem=True)
    add("--world_size", default=1, type=int)
    # torch.distributed.launch passes --local-rank=N on torch 2.x, --local_rank=N before; LOCAL_RANK wins (torchrun)
    add("--local_rank", "--local-rank", default=-1, type=int)
    add("--dist_on_itp", action="store_true")
    add("--dist_url", default="env://")
    add("--dist_timeout", default=60.0, type=float,
        help="minutes a collective may wait for the other ranks before the run stops (ours; covers --compile on "
             "every rank and a rank-0 write of a large checkpoint)")


def parse_args(parser: argparse.ArgumentParser, demo_defaults: dict, argv: list[str] | None = None
               ) -> argparse.Namespace:
    """The command line; with --demo, the demo's defaults take the original ones' place (explicit flags still win)."""
    args = parser.parse_args(argv)
    if args.demo:
        parser.set_defaults(**demo_defaults)
        args = parser.parse_args(argv)
    return args


def default_amp(device: torch.device) -> str:
    """--amp when not given: bf16 on a GPU that computes it natively, fp16 (with loss scaling) on other GPUs, none on
    the CPU."""
    if device.type != "cuda":
        return "none"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


# --------------------------------------------------------------------------------------------------------------
# Schedules

@dataclass(frozen=True)
class Schedule:
    """A run's per-step values: learning rate (warm-up from 0, then cosine) and weight decay (cosine)."""

    lr: np.ndarray
    weight_decay: np.ndarray
    steps_per_epoch: int
    peak_lr: float  # --lr scaled to the global batch (what the optimizer is created with)
    min_lr: float


def scale_lr(value: float, global_batch: int) -> float:
    """The originals' linear rule: flags give the rate per 256 clips of global batch."""
    return value * global_batch / 256


def build_schedule(args: argparse.Namespace, global_batch: int, steps_per_epoch: int) -> Schedule:
    """--lr and --min_lr scaled to the global batch, with --warmup_epochs / --warmup_steps and --weight_decay(_end)."""
    peak_lr, min_lr = scale_lr(args.lr, global_batch), scale_lr(args.min_lr, global_batch)
    lr = cosine_scheduler(peak_lr, min_lr, args.epochs, steps_per_epoch, args.warmup_epochs,
                          warmup_steps=args.warmup_steps)
    wd_end = args.weight_decay if args.weight_decay_end is None else args.weight_decay_end
    return Schedule(lr, cosine_scheduler(args.weight_decay, wd_end, args.epochs, steps_per_epoch), steps_per_epoch,
                    peak_lr, min_lr)
